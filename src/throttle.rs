//! Admission: the node's in-flight cap (503) and each function's concurrency cap (429).
//!
//! Permits are taken before any instance is built and are released when the guest is done,
//! on every path (success, trap, timeout, client disconnect), because they are owned by the
//! task that runs the guest. A refusal is a failed `try_acquire`: no allocation, no waiting.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::GatewayError;
use crate::runtime::Function;

/// The permits an admitted invocation holds until its guest is done.
#[derive(Debug)]
pub struct Admission {
    _function: OwnedSemaphorePermit,
    _node: OwnedSemaphorePermit,
}

/// Node-wide admission state.
#[derive(Debug)]
pub struct NodeLimiter {
    in_flight: Arc<Semaphore>,
    max: usize,
}

impl NodeLimiter {
    pub fn new(max_in_flight: usize) -> Self {
        NodeLimiter {
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max: max_in_flight,
        }
    }

    /// Executions running now.
    pub fn in_flight(&self) -> usize {
        self.max - self.in_flight.available_permits()
    }

    /// Admits one invocation of `function`, or refuses at once.
    pub fn admit(&self, function: &Function) -> Result<Admission, GatewayError> {
        let function_permit = function.permits.clone().try_acquire_owned().map_err(|_| {
            GatewayError::ResourceExhausted {
                message: format!(
                    "function '{}' is at its max_concurrency of {}",
                    function.name, function.config.max_concurrency
                ),
                retry_after_s: 1,
            }
        })?;
        let node_permit = self.in_flight.clone().try_acquire_owned().map_err(|_| {
            GatewayError::ResourceThrottled {
                message: format!("this node is at its limit of {} executions", self.max),
                retry_after_s: 1,
            }
        })?;
        Ok(Admission {
            _function: function_permit,
            _node: node_permit,
        })
    }
}
