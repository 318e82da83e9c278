//! The `wasmgate` command line: `serve`, `check`, `sign`, `invoke`, `event`, `deploy`,
//! `versions`.

use std::path::PathBuf;

/// `println!` for what a command prints. A reader that has gone away (`wasmgate versions f
/// | head -1`) is not worth a panic: the line is dropped and the command ends normally;
/// another error writing standard output is reported on standard error.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                eprintln!("error: cannot write to standard output: {e}");
            }
        }
    }};
}
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use wasmgate::App;
use wasmgate::config::Config;

/// mimalloc instead of the system allocator: requests allocate on one worker thread and free
/// on another, which glibc's per-arena locks turn into futex waits and context switches
/// (measured in README, "Performance": about a fifth of a sync request's CPU). Wrapped so
/// that only layouts that need it take mimalloc's aligned path (`wasmgate::alloc`).
#[global_allocator]
static ALLOCATOR: wasmgate::alloc::Allocator = wasmgate::alloc::Allocator;

#[derive(Parser)]
#[command(
    name = "wasmgate",
    about = "Authenticated HTTP-trigger edge proxy for WebAssembly functions",
    disable_version_flag = true,
    subcommand_required = false,
    arg_required_else_help = true
)]
struct Cli {
    /// Print the version, the embedded wasmtime's version and the engine's compatibility key
    /// (what compiled artifacts are keyed on).
    #[arg(short = 'V', long = "version")]
    version: bool,
    /// Log format: text or json. Default: json lines when stderr is not a terminal (a
    /// service, a container), readable text on a terminal.
    #[arg(long, global = true, env = "WASMGATE_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config, compile every function, and serve until SIGTERM/SIGINT.
    Serve {
        #[arg(long, default_value = "wasmgate.toml")]
        config: PathBuf,
    },
    /// Validate the config and compile every function; print the route table.
    Check {
        #[arg(long, default_value = "wasmgate.toml")]
        config: PathBuf,
    },
    /// Print the headers (ACS3-HMAC-SHA256) that sign a request to URL, one `Name: value` per
    /// line: `curl -H @<(wasmgate sign --key-id AK1 --secret-env AK1_SECRET URL) URL`.
    Sign {
        /// The access key id.
        #[arg(long)]
        key_id: String,
        /// The environment variable holding the key's secret.
        #[arg(long)]
        secret_env: String,
        /// The request method.
        #[arg(short = 'X', long = "request", default_value = "GET")]
        method: String,
        /// The URL to sign (only its path and query are signed).
        url: String,
    },
    /// Call a trigger and print its answer; exits non-zero on an error answer (>= 400),
    /// with the error body printed.
    Invoke {
        /// The trigger's URL.
        url: String,
        /// The method (default GET, or POST with -d or --async).
        #[arg(short = 'X', long = "request")]
        method: Option<String>,
        /// The request body: text, @FILE, or @- for stdin.
        #[arg(short = 'd', long = "data")]
        data: Option<String>,
        /// Run asynchronously (X-Fc-Invocation-Type: Async): prints the task id.
        #[arg(long = "async")]
        asynchronous: bool,
        /// The async task's id (X-Fc-Async-Task-Id).
        #[arg(long)]
        task_id: Option<String>,
        /// Where the async result is POSTed (X-Callback-Url).
        #[arg(long)]
        callback: Option<String>,
        /// Print the status line and headers before the body.
        #[arg(short = 'i', long = "include")]
        include: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Publish an event to an event API trigger (SPEC section 8.3) and print the answer.
    Event {
        /// The event trigger's URL.
        url: String,
        /// The event type.
        #[arg(value_name = "TYPE")]
        event_type: String,
        /// The event's data: JSON text, @FILE or @-.
        #[arg(long)]
        data: Option<String>,
        /// Run the subscribers now and print their answer.
        #[arg(long)]
        sync: bool,
        /// Seconds to wait before delivery.
        #[arg(long)]
        delay: Option<f64>,
        /// The event's time (RFC 3339); a delay counts from it.
        #[arg(long)]
        at: Option<String>,
        /// The event id (idempotency: a second publish with it is refused, 409).
        #[arg(long)]
        id: Option<String>,
        /// Print the status line and headers before the body.
        #[arg(short = 'i', long = "include")]
        include: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a signed JWT (for a `jwt` trigger, tests and demos): `curl -H "Authorization:
    /// Bearer $(wasmgate jwt --key tests/fixtures/jwt-rsa.pem --kid rsa-1 --sub alice ...)"`.
    Jwt {
        /// The private key, PEM (RSA, EC P-256/P-384 or Ed25519).
        #[arg(long)]
        key: PathBuf,
        /// The algorithm: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA.
        #[arg(long, default_value = "RS256")]
        alg: String,
        /// The key id (`kid` header) the verifier's JWKS knows the key by.
        #[arg(long)]
        kid: Option<String>,
        /// The subject (`sub`).
        #[arg(long, default_value = "demo-user")]
        sub: String,
        /// The issuer (`iss`).
        #[arg(long)]
        iss: Option<String>,
        /// An audience (`aud`), repeatable.
        #[arg(long)]
        aud: Vec<String>,
        /// Seconds until it expires (`exp`).
        #[arg(long, default_value_t = 3600)]
        ttl: i64,
        /// An extra claim, NAME=VALUE (VALUE as JSON if it parses, else a string); repeatable.
        #[arg(long)]
        claim: Vec<String>,
        /// Print the JWKS that verifies the key's tokens (its public key, with --kid and
        /// --alg) instead of a token: serve it as a `jwks_url`, or save it as a `jwks_file`.
        #[arg(long)]
        jwks: bool,
    },
    /// Upload a component as a new version of NAME through the admin API.
    Deploy {
        name: String,
        file: PathBuf,
        /// Point this alias at the new version.
        #[arg(long)]
        alias: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List the deployed versions and aliases of NAME through the admin API.
    Versions {
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Read and write key-value buckets through the admin API.
    #[command(subcommand)]
    Kv(KvCommand),
}

#[derive(Subcommand)]
enum KvCommand {
    /// The keys of BUCKET (every page), or with no BUCKET the buckets and what they hold.
    List {
        bucket: Option<String>,
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Print the value of KEY (its bytes as stored).
    Get {
        bucket: String,
        key: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Set KEY to VALUE, or to the standard input when VALUE is left out.
    Put {
        bucket: String,
        key: String,
        value: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Delete KEY.
    Delete {
        bucket: String,
        key: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(clap::Args)]
struct ClientArgs {
    /// An extra header, 'Name: value' (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Sign the request (ACS3-HMAC-SHA256) with this access key id.
    #[arg(long, value_name = "KEY_ID", requires = "secret_env")]
    sign: Option<String>,
    /// The environment variable holding the signing key's secret.
    #[arg(long)]
    secret_env: Option<String>,
    /// A PEM CA certificate to trust for HTTPS (besides the Web PKI roots).
    #[arg(long)]
    cacert: Option<PathBuf>,
}

impl ClientArgs {
    fn connection(self) -> wasmgate::client::Connection {
        wasmgate::client::Connection {
            cacert: self.cacert,
            sign: self.sign.zip(self.secret_env),
            headers: self.headers,
        }
    }
}

#[derive(clap::Args)]
struct AdminArgs {
    /// The admin listener's URL.
    #[arg(long, default_value = "https://localhost:9090", env = "WASMGATE_ADMIN")]
    admin: String,
    /// The environment variable holding the admin token (sent as a bearer token when set).
    #[arg(long, default_value = "WASMGATE_ADMIN_TOKEN")]
    token_env: String,
    /// A PEM CA certificate to trust for an HTTPS admin listener (besides the Web PKI roots).
    #[arg(long, env = "WASMGATE_CACERT")]
    cacert: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = cli.log_format.unwrap_or_else(|| {
        use std::io::IsTerminal;
        if std::io::stderr().is_terminal() {
            LogFormat::Text
        } else {
            LogFormat::Json
        }
    });
    if cli.version {
        return match version() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let Some(command) = cli.command else {
        eprintln!("error: a command is required (see wasmgate --help)");
        return ExitCode::FAILURE;
    };
    let _guard = match init_logging(format) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: cannot start the log writer: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match command {
        Command::Jwt {
            key,
            alg,
            kid,
            sub,
            iss,
            aud,
            ttl,
            claim,
            jwks,
        } => {
            if jwks {
                jwks_of(&key, &alg, kid)
            } else {
                jwt(&key, &alg, kid, &sub, iss, aud, ttl, &claim)
            }
        }
        Command::Serve { config } => serve(config),
        Command::Check { config } => check(config),
        Command::Sign {
            key_id,
            secret_env,
            method,
            url,
        } => sign(&key_id, &secret_env, &method, &url),
        Command::Invoke {
            url,
            method,
            data,
            asynchronous,
            task_id,
            callback,
            include,
            client,
        } => {
            let options = wasmgate::client::Invoke {
                method,
                data,
                asynchronous,
                task_id,
                callback,
            };
            wasmgate::client::invoke_call(&url, &options)
                .and_then(|call| answer(client, call, include))
        }
        Command::Event {
            url,
            event_type,
            data,
            sync,
            delay,
            at,
            id,
            include,
            client,
        } => {
            let options = wasmgate::client::Publish {
                data,
                synchronous: sync,
                delay,
                at,
                id,
            };
            wasmgate::client::event_call(&url, &event_type, &options)
                .and_then(|call| answer(client, call, include))
        }
        Command::Deploy {
            name,
            file,
            alias,
            admin,
        } => deploy(&name, &file, alias.as_deref(), &admin),
        Command::Versions { name, admin } => versions(&name, &admin),
        Command::Kv(op) => kv(op),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr through a background writer so request threads never block on it
/// (`wasmgate::log_writer`); the guard writes the last lines at exit.
fn init_logging(format: LogFormat) -> Result<wasmgate::log_writer::Flush> {
    let (writer, guard) = wasmgate::log_writer::LogWriter::start(std::io::stderr())?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    wasmgate::access_log::install(
        match format {
            LogFormat::Text => wasmgate::access_log::Format::Text,
            LogFormat::Json => wasmgate::access_log::Format::Json,
        },
        writer.clone(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(guard)
}

/// `--version`: this build, the wasmtime it embeds and the engine's compatibility key for
/// the default settings (`check` prints the key for a given config).
fn version() -> Result<()> {
    let config = Config::parse(
        "[server]\nlisten = \"127.0.0.1:0\"\n",
        std::path::Path::new("wasmgate.toml"),
        &|_| None,
    )?;
    let engine = wasmgate::runtime::engine::build_engine(&config)?;
    out!("wasmgate {}", env!("CARGO_PKG_VERSION"));
    out!("wasmtime {}", wasmgate::runtime::engine::WASMTIME_VERSION);
    out!(
        "engine {} ({})",
        wasmgate::runtime::engine::engine_key(&engine),
        std::env::consts::ARCH
    );
    Ok(())
}

/// `wasmgate jwt`: a signed token with `sub`, `iat`, `exp` and what the flags add.
#[allow(clippy::too_many_arguments)]
fn jwt(
    key: &std::path::Path,
    alg: &str,
    kid: Option<String>,
    sub: &str,
    iss: Option<String>,
    aud: Vec<String>,
    ttl: i64,
    claims: &[String],
) -> Result<()> {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let pem = std::fs::read(key)
        .map_err(|e| anyhow::anyhow!("--key {}: cannot read: {e}", key.display()))?;
    let algorithm: Algorithm = alg
        .parse()
        .map_err(|_| anyhow::anyhow!("--alg '{alg}' is not a JWT algorithm"))?;
    let encoding = match algorithm {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        _ => anyhow::bail!("--alg {alg}: only public-key algorithms are signed here"),
    }
    .map_err(|e| anyhow::anyhow!("--key {}: not a {alg} private key: {e}", key.display()))?;
    let now = chrono::Utc::now().timestamp();
    let mut body = serde_json::Map::new();
    body.insert("sub".into(), sub.into());
    body.insert("iat".into(), now.into());
    body.insert("exp".into(), (now + ttl).into());
    if let Some(iss) = iss {
        body.insert("iss".into(), iss.into());
    }
    match aud.len() {
        0 => {}
        1 => {
            body.insert("aud".into(), aud[0].clone().into());
        }
        _ => {
            body.insert("aud".into(), aud.into());
        }
    }
    for c in claims {
        let (name, value) = c
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--claim '{c}': expected NAME=VALUE"))?;
        let value = serde_json::from_str(value).unwrap_or_else(|_| value.into());
        body.insert(name.to_string(), value);
    }
    let mut header = Header::new(algorithm);
    header.kid = kid;
    let token = jsonwebtoken::encode(&header, &body, &encoding)
        .map_err(|e| anyhow::anyhow!("signing failed: {e}"))?;
    out!("{token}");
    Ok(())
}

/// `wasmgate jwt --jwks`: the JWKS of a private key's public half.
fn jwks_of(key: &std::path::Path, alg: &str, kid: Option<String>) -> Result<()> {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let pem = std::fs::read(key)
        .map_err(|e| anyhow::anyhow!("--key {}: cannot read: {e}", key.display()))?;
    let der = rustls_pemfile::pkcs8_private_keys(&mut pem.as_slice())
        .next()
        .ok_or_else(|| anyhow::anyhow!("--key {}: no PKCS#8 private key", key.display()))?
        .map_err(|e| anyhow::anyhow!("--key {}: {e}", key.display()))?;
    let der = der.secret_pkcs8_der();
    let bad = |e: ring::error::KeyRejected| {
        anyhow::anyhow!("--key {}: not a {alg} private key: {e}", key.display())
    };
    let mut jwk = match alg {
        "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" => {
            let pair = ring::rsa::KeyPair::from_pkcs8(der).map_err(bad)?;
            let public: ring::rsa::PublicKeyComponents<Vec<u8>> = pair.public().into();
            serde_json::json!({"kty": "RSA", "n": b64(&public.n), "e": b64(&public.e)})
        }
        "ES256" | "ES384" => {
            let (signing, crv, len) = if alg == "ES256" {
                (
                    &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    "P-256",
                    32,
                )
            } else {
                (
                    &ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                    "P-384",
                    48,
                )
            };
            let rng = ring::rand::SystemRandom::new();
            let pair =
                ring::signature::EcdsaKeyPair::from_pkcs8(signing, der, &rng).map_err(bad)?;
            use ring::signature::KeyPair as _;
            // Uncompressed point: 0x04 || x || y.
            let point = pair.public_key().as_ref();
            serde_json::json!({"kty": "EC", "crv": crv, "x": b64(&point[1..1 + len]),
                "y": b64(&point[1 + len..])})
        }
        "EdDSA" => {
            let pair =
                ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(bad)?;
            use ring::signature::KeyPair as _;
            serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref())})
        }
        other => anyhow::bail!("--alg {other}: only public-key algorithms have a JWKS"),
    };
    jwk["alg"] = alg.into();
    jwk["use"] = "sig".into();
    if let Some(kid) = kid {
        jwk["kid"] = kid.into();
    }
    out!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({ "keys": [jwk] }))?
    );
    Ok(())
}

fn build(config: &std::path::Path) -> Result<App> {
    let config = Config::load(config)?;
    App::build(config)
}

fn check(config: PathBuf) -> Result<()> {
    // Read-only: `check` may run beside a live node on the same data_dir.
    let app = App::check(Config::load(&config)?)?;
    for w in app.warnings.iter().chain(&app.pending) {
        eprintln!("warning: {w}");
    }
    out!("{}", app.route_table().trim_end_matches('\n'));
    out!(
        "engine {} (compiled artifacts are keyed on it)",
        wasmgate::runtime::engine::engine_key(app.dispatcher.runtime().engine())
    );
    out!(
        "{}: ok ({} functions, {} triggers)",
        config.display(),
        app.config.functions.len(),
        app.triggers.len()
    );
    Ok(())
}

fn sign(key_id: &str, secret_env: &str, method: &str, url: &str) -> Result<()> {
    let secret = std::env::var(secret_env).map_err(|_| {
        anyhow::anyhow!("--secret-env: environment variable '{secret_env}' is not set")
    })?;
    let uri: http::Uri = url
        .parse()
        .map_err(|e| anyhow::anyhow!("URL '{url}' is not valid: {e}"))?;
    let method = method.to_ascii_uppercase();
    let headers = wasmgate::auth::signature::sign_acs3(
        key_id,
        &secret,
        &method,
        uri.path(),
        uri.query().unwrap_or(""),
        chrono::Utc::now(),
    );
    for (name, value) in headers {
        out!("{name}: {value}");
    }
    Ok(())
}

/// Sends a client call and prints the answer; an answer of 400 or above is an error.
fn answer(client: ClientArgs, call: wasmgate::client::Call, include: bool) -> Result<()> {
    let answer = wasmgate::client::send(&client.connection(), call)?;
    let mut out = std::io::stdout().lock();
    answer.print(include, &mut out)?;
    if answer.status == 202
        && !include
        && let Some(id) = answer.header("x-fc-async-task-id")
    {
        use std::io::Write as _;
        writeln!(out, "accepted: task {id}")?;
    }
    if answer.status >= 400 {
        anyhow::bail!(
            "the gateway answered {} (request id {})",
            answer.status,
            answer.header("x-fc-request-id").unwrap_or("-")
        );
    }
    Ok(())
}

/// Calls the admin API; a non-2xx answer is an error carrying the gateway's message.
fn admin_call(
    admin: &AdminArgs,
    method: reqwest::Method,
    path: &str,
    body: Vec<u8>,
) -> Result<serde_json::Value> {
    let bytes = admin_bytes(admin, method, path, body)?;
    Ok(serde_json::from_slice(&bytes).unwrap_or_default())
}

/// Calls the admin API; the answer's body as it came.
fn admin_bytes(
    admin: &AdminArgs,
    method: reqwest::Method,
    path: &str,
    body: Vec<u8>,
) -> Result<bytes::Bytes> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut client = reqwest::Client::builder();
    if let Some(ca) = &admin.cacert {
        let pem = std::fs::read(ca)
            .map_err(|e| anyhow::anyhow!("--cacert {}: cannot read: {e}", ca.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
            anyhow::anyhow!("--cacert {}: not a PEM certificate: {e}", ca.display())
        })?;
        client = client.add_root_certificate(cert);
    }
    let client = client.build()?;
    runtime.block_on(async {
        let mut req = client
            .request(
                method,
                format!("{}{path}", admin.admin.trim_end_matches('/')),
            )
            .body(body);
        if let Ok(token) = std::env::var(&admin.token_env) {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the admin API at {}: {}",
                admin.admin,
                wasmgate::client::error_chain(&e)
            )
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.unwrap_or_default();
        if !status.is_success() {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            anyhow::bail!(
                "{status}: {}",
                v.get("Message").and_then(|m| m.as_str()).unwrap_or("")
            );
        }
        Ok(bytes)
    })
}

/// `wasmgate kv ...`: the admin API's `/-/buckets` routes.
fn kv(op: KvCommand) -> Result<()> {
    use std::io::{Read as _, Write as _};
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let mut out = std::io::stdout().lock();
    match op {
        KvCommand::List {
            bucket: None,
            admin,
            ..
        } => {
            let v = admin_call(&admin, reqwest::Method::GET, "/-/buckets", Vec::new())?;
            writeln!(
                out,
                "{:<24} {:>10} {:>14} {:>14}",
                "BUCKET", "KEYS", "BYTES", "MAX_BYTES"
            )?;
            for b in v["buckets"].as_array().into_iter().flatten() {
                writeln!(
                    out,
                    "{:<24} {:>10} {:>14} {:>14}",
                    b["name"].as_str().unwrap_or(""),
                    b["keys"].as_u64().unwrap_or(0),
                    b["bytes"].as_u64().unwrap_or(0),
                    b["max_bytes"].as_u64().unwrap_or(0)
                )?;
            }
        }
        KvCommand::List {
            bucket: Some(bucket),
            prefix,
            admin,
        } => {
            let mut cursor: Option<u64> = None;
            loop {
                let mut path = format!("/-/buckets/{}/keys?prefix={}", enc(&bucket), enc(&prefix));
                if let Some(c) = cursor {
                    path.push_str(&format!("&cursor={c}"));
                }
                let v = admin_call(&admin, reqwest::Method::GET, &path, Vec::new())?;
                for k in v["keys"].as_array().into_iter().flatten() {
                    writeln!(out, "{}", k.as_str().unwrap_or(""))?;
                }
                match v["cursor"].as_u64() {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
        }
        KvCommand::Get { bucket, key, admin } => {
            let path = format!("/-/buckets/{}/keys/{}", enc(&bucket), enc(&key));
            let value = admin_bytes(&admin, reqwest::Method::GET, &path, Vec::new())?;
            out.write_all(&value)?;
        }
        KvCommand::Put {
            bucket,
            key,
            value,
            admin,
        } => {
            let body = match value {
                Some(v) => v.into_bytes(),
                None => {
                    let mut b = Vec::new();
                    std::io::stdin().read_to_end(&mut b)?;
                    b
                }
            };
            let path = format!("/-/buckets/{}/keys/{}", enc(&bucket), enc(&key));
            admin_call(&admin, reqwest::Method::PUT, &path, body)?;
        }
        KvCommand::Delete { bucket, key, admin } => {
            let path = format!("/-/buckets/{}/keys/{}", enc(&bucket), enc(&key));
            admin_call(&admin, reqwest::Method::DELETE, &path, Vec::new())?;
        }
    }
    Ok(())
}

fn deploy(
    name: &str,
    file: &std::path::Path,
    alias: Option<&str>,
    admin: &AdminArgs,
) -> Result<()> {
    let bytes =
        std::fs::read(file).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", file.display()))?;
    let v = admin_call(
        admin,
        reqwest::Method::PUT,
        &format!("/-/functions/{name}"),
        bytes,
    )?;
    let version = v["version"].as_u64().unwrap_or(0);
    out!(
        "{name} version {version} sha256 {} ({} bytes)",
        v["sha256"].as_str().unwrap_or(""),
        v["size"]
    );
    if let Some(alias) = alias {
        let body = serde_json::json!({ "version": version })
            .to_string()
            .into_bytes();
        admin_call(
            admin,
            reqwest::Method::PUT,
            &format!("/-/functions/{name}/aliases/{alias}"),
            body,
        )?;
        out!("{name} alias {alias} -> version {version}");
    }
    Ok(())
}

fn versions(name: &str, admin: &AdminArgs) -> Result<()> {
    let v = admin_call(
        admin,
        reqwest::Method::GET,
        &format!("/-/functions/{name}"),
        Vec::new(),
    )?;
    out!("{:<8} {:<66} {:>10}  CREATED", "VERSION", "SHA256", "SIZE");
    for ver in v["versions"].as_array().into_iter().flatten() {
        out!(
            "{:<8} {:<66} {:>10}  {}",
            ver["version"].to_string(),
            ver["sha256"].as_str().unwrap_or(""),
            ver["size"].to_string(),
            ver["created"].as_str().unwrap_or("")
        );
    }
    for (alias, a) in v["aliases"].as_object().into_iter().flatten() {
        match a.get("additional") {
            Some(x) => out!(
                "alias {alias} -> version {} ({} to version {})",
                a["version"],
                x["weight"],
                x["version"]
            ),
            None => out!("alias {alias} -> version {}", a["version"]),
        }
    }
    Ok(())
}

/// Raises the open-file soft limit to the hard limit: every connection is a descriptor.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!("cannot raise the open-file limit: {e}");
        }
    }
    let now = getrlimit(Resource::Nofile);
    tracing::info!(
        "open-file limit: {}",
        now.current
            .map_or("unlimited".to_string(), |n| n.to_string())
    );
}

fn serve(config: PathBuf) -> Result<()> {
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let app = build(&config)?;
        for w in &app.warnings {
            tracing::warn!("{w}");
        }
        for p in &app.pending {
            tracing::info!("{p}");
        }
        release_startup_memory();
        let gateway = wasmgate::Gateway::new(app);
        gateway.attach(wasmgate::sources::supervise);
        let served = wasmgate::server::run(gateway, shutdown_signal()).await;
        // The last spans (the drain's) reach the collector if it answers soon.
        wasmgate::trace::shutdown(std::time::Duration::from_secs(2)).await;
        served
    })
}

/// Compiling the functions at start-up (Cranelift, on several threads) leaves megabytes of
/// freed heap in the allocator's per-thread arenas; hand it back to the system before
/// serving, so an idle node's resident size is what it uses.
fn release_startup_memory() {
    // SAFETY: mi_collect only frees and returns memory the allocator no longer uses; it has
    // no preconditions. `true` also takes over what exited threads (the compiler's) left.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called (before
/// any listener is bound), not when the future is first polled: a signal that arrives as soon
/// as the listeners are announced is a clean stop, not the default action.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!("cannot listen for SIGTERM/SIGINT: {e}");
                std::future::pending::<()>().await
            }
        }
    }
}
