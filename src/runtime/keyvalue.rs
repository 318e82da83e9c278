//! The host side of `wasi:keyvalue@0.2.0-draft` (store, atomics, batch) over
//! [`crate::kv`] buckets, and of `wasi:config/store@0.2.0-rc.1` over a function's
//! variables (wasmtime's own config host, fed from the config).
//!
//! The WIT in `wit/keyvalue` is the one wasmtime 48's `wasmtime-wasi-keyvalue` ships; the
//! bindings are generated here because that crate's host is synchronous and in memory. Every
//! call is async, so a guest waiting on a slow store is cut off by its deadline like any
//! other guest (the invocation's timeout drops the whole guest future).

use std::sync::Arc;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable, ResourceTableError};

use crate::kv::{Bucket, KvError, Write};

mod generated {
    wasmtime::component::bindgen!({
        path: "wit/keyvalue",
        world: "wasi:keyvalue/imports",
        // `open` and dropping a bucket never wait on the store: plain calls.
        imports: {
            default: async | trappable,
            "wasi:keyvalue/store.open": trappable,
            "wasi:keyvalue/store.[drop]bucket": trappable,
        },
        with: {
            "wasi:keyvalue/store.bucket": super::OpenBucket,
        },
        trappable_error_type: {
            "wasi:keyvalue/store.error" => super::Error,
        },
    });
}

use generated::wasi::keyvalue::{atomics, batch, store};

/// A bucket the guest opened: the resource behind `wasi:keyvalue/store.bucket`.
pub struct OpenBucket(Arc<Bucket>);

/// A host call's failure: a store error the guest sees, or a fault that traps it.
pub enum Error {
    Store(KvError),
    Trap(wasmtime::Error),
}

impl From<KvError> for Error {
    fn from(e: KvError) -> Self {
        Error::Store(e)
    }
}

impl From<ResourceTableError> for Error {
    fn from(e: ResourceTableError) -> Self {
        Error::Trap(e.into())
    }
}

/// The buckets one function may open (its `keyvalue` list).
#[derive(Clone, Default)]
pub struct Buckets(pub Arc<[Arc<Bucket>]>);

/// What the generated traits are implemented on: the function's buckets and the store's
/// resource table.
pub struct KeyValue<'a> {
    buckets: &'a Buckets,
    table: &'a mut ResourceTable,
}

impl<'a> KeyValue<'a> {
    pub fn new(buckets: &'a Buckets, table: &'a mut ResourceTable) -> Self {
        KeyValue { buckets, table }
    }

    fn bucket(&self, b: &Resource<OpenBucket>) -> Result<Arc<Bucket>, Error> {
        Ok(self.table.get(b)?.0.clone())
    }
}

struct HasKeyValue;

impl HasData for HasKeyValue {
    type Data<'a> = KeyValue<'a>;
}

/// Adds the three keyvalue interfaces to `linker`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> KeyValue<'_>,
) -> wasmtime::Result<()> {
    store::add_to_linker::<T, HasKeyValue>(linker, view)?;
    atomics::add_to_linker::<T, HasKeyValue>(linker, view)?;
    batch::add_to_linker::<T, HasKeyValue>(linker, view)?;
    Ok(())
}

impl store::Host for KeyValue<'_> {
    fn open(&mut self, identifier: String) -> Result<Resource<OpenBucket>, Error> {
        let bucket = self
            .buckets
            .0
            .iter()
            .find(|b| b.name() == identifier)
            .cloned()
            .ok_or(Error::Store(KvError::NoSuchStore))?;
        Ok(self.table.push(OpenBucket(bucket))?)
    }

    fn convert_error(&mut self, err: Error) -> wasmtime::Result<store::Error> {
        match err {
            Error::Store(KvError::NoSuchStore) => Ok(store::Error::NoSuchStore),
            Error::Store(e) => Ok(store::Error::Other(e.to_string())),
            Error::Trap(e) => Err(e),
        }
    }
}

impl store::HostBucket for KeyValue<'_> {
    async fn get(
        &mut self,
        bucket: Resource<OpenBucket>,
        key: String,
    ) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.bucket(&bucket)?.get(&key).await?)
    }

    async fn set(
        &mut self,
        bucket: Resource<OpenBucket>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), Error> {
        let b = self.bucket(&bucket)?;
        Ok(b.write("set", vec![Write::Set(key, value)]).await?)
    }

    async fn delete(&mut self, bucket: Resource<OpenBucket>, key: String) -> Result<(), Error> {
        let b = self.bucket(&bucket)?;
        Ok(b.write("delete", vec![Write::Delete(key)]).await?)
    }

    async fn exists(&mut self, bucket: Resource<OpenBucket>, key: String) -> Result<bool, Error> {
        Ok(self.bucket(&bucket)?.exists(&key).await?)
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<OpenBucket>,
        cursor: Option<u64>,
    ) -> Result<store::KeyResponse, Error> {
        let page = self
            .bucket(&bucket)?
            .list("", cursor, crate::kv::PAGE_KEYS)
            .await?;
        Ok(store::KeyResponse {
            keys: page.keys,
            cursor: page.cursor,
        })
    }

    fn drop(&mut self, bucket: Resource<OpenBucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for KeyValue<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<OpenBucket>,
        key: String,
        delta: u64,
    ) -> Result<u64, Error> {
        Ok(self.bucket(&bucket)?.increment(&key, delta).await?)
    }
}

impl batch::Host for KeyValue<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<OpenBucket>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, Error> {
        let values = self.bucket(&bucket)?.get_many(&keys).await?;
        Ok(keys
            .into_iter()
            .zip(values)
            .map(|(k, v)| v.map(|v| (k, v)))
            .collect())
    }

    async fn set_many(
        &mut self,
        bucket: Resource<OpenBucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), Error> {
        let writes = key_values
            .into_iter()
            .map(|(k, v)| Write::Set(k, v))
            .collect();
        Ok(self.bucket(&bucket)?.write("set_many", writes).await?)
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<OpenBucket>,
        keys: Vec<String>,
    ) -> Result<(), Error> {
        let writes = keys.into_iter().map(Write::Delete).collect();
        Ok(self.bucket(&bucket)?.write("delete_many", writes).await?)
    }
}
