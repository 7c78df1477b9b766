//! `trellis`: the control plane binary. Wires the crates together; owns no logic of its own
//! beyond configuration, the embedded default and process lifecycle.

#![forbid(unsafe_code)]

mod cli;
mod config;
mod demo;
mod embedded;
mod inject;
mod install;
mod observe;
mod serve;

use std::str::FromStr;

use anyhow::Context;
use clap::Parser;
use secrecy::ExposeSecret;
use sqlx::postgres::PgConnectOptions;
use trellis_store::DbRoles;

use config::{Cli, Command, Global, LogFormat};

// A REST request allocates and frees many small values across worker threads; glibc's
// allocator spent about a fifth of the server's CPU on them under load (BENCHMARKS.md, "REST
// reads against `pgbench -S`").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let (global, command) = Cli::parse().into_command();
    // A client command reports to the person at the terminal, once and plainly; the server's
    // commands log as well.
    let client = command.is_client();
    init_logging(&global);
    rustls::crypto::ring::default_provider()
        .install_default()
        .expect("no other crypto provider is installed first");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(run(global, command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if !client {
                tracing::error!("{e:#}");
            }
            eprintln!("trellis: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(global: Global, command: Command) -> anyhow::Result<()> {
    let xdg_config = std::env::var_os("XDG_CONFIG_HOME").map(std::path::PathBuf::from);
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    // Client commands and document output need no database.
    let command = match command {
        Command::Openapi => {
            println!("{}", serde_json::to_string_pretty(&trellis_api::openapi::document())?);
            return Ok(());
        }
        Command::Install(config::InstallTarget::Kubernetes(args)) => {
            print!("{}", install::kubernetes(&args)?);
            return Ok(());
        }
        Command::Install(config::InstallTarget::Systemd(args)) => {
            print!("{}", install::systemd(&args));
            return Ok(());
        }
        Command::Install(config::InstallTarget::AgentSystemd(args)) => {
            print!("{}", install::agent_systemd(&args));
            return Ok(());
        }
        Command::Inject(args) => return inject_files(&args),
        Command::Demo(args) => return demo::run(args, &global).await,
        Command::DemoApp(args) => return demo::apps::run(args).await,
        Command::Apply(a) => return cli::apply(a, xdg_config, home).await,
        Command::Get(a) => return cli::get(a, xdg_config, home).await,
        Command::Delete(a) => return cli::delete(a, xdg_config, home).await,
        Command::Logs(a) => return observe::logs(a, xdg_config, home).await,
        Command::Why(a) => return observe::why(a, xdg_config, home).await,
        Command::Impact(a) => return observe::impact(a, xdg_config, home).await,
        Command::Events(a) => return observe::events(a, xdg_config, home).await,
        other => other,
    };
    let data_dir = global.data_dir(
        std::env::var_os("XDG_DATA_HOME").map(Into::into),
        std::env::var_os("HOME").map(Into::into),
    );
    let database = Database::resolve(&global, &data_dir).await?;
    let result = match command {
        Command::Migrate => {
            trellis_store::migrate(&database.roles.owner).await.context("applying migrations")?;
            println!("migrations applied ({})", database.description);
            Ok(())
        }
        Command::Serve(serve) => match keyring(&global, &data_dir) {
            Ok(ring) => serve::serve(serve, &database, ring).await,
            Err(e) => Err(e),
        },
        Command::Kek(config::KekCommand::Rotate) => rotate_kek(&global, &data_dir, &database).await,
        Command::CreateToken(args) => create_token(args, &database).await,
        Command::Openapi
        | Command::Apply(_)
        | Command::Get(_)
        | Command::Delete(_)
        | Command::Logs(_)
        | Command::Why(_)
        | Command::Impact(_)
        | Command::Events(_)
        | Command::Install(_)
        | Command::Inject(_)
        | Command::Demo(_)
        | Command::DemoApp(_) => {
            unreachable!("handled before the database")
        }
    };
    if let Some(pg) = database.private
        && let Err(e) = pg.stop().await
    {
        tracing::error!("stopping the private PostgreSQL: {e:#}");
    }
    result
}

/// `trellis inject`: the manifests to stdout, what happened to each document to stderr.
fn inject_files(args: &config::Inject) -> anyhow::Result<()> {
    use std::io::Read;
    let files = if args.files.is_empty() { vec!["-".into()] } else { args.files.clone() };
    let mut texts = Vec::new();
    for f in &files {
        texts.push(if f == std::path::Path::new("-") {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("reading stdin")?;
            ("stdin".to_owned(), s)
        } else {
            (
                f.display().to_string(),
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
            )
        });
    }
    let settings = inject::Settings {
        image: args.agent_image.clone(),
        mesh: args.mesh.clone(),
        server: args.server.clone(),
        service: args.service.clone(),
        ports: args.ports.clone(),
        token_secret: args.token_secret.clone(),
        platform_ca: args.platform_ca_configmap.clone(),
    };
    let injected = inject::inject(&texts, &settings)?;
    print!("{}", injected.yaml);
    for (name, outcome) in &injected.outcomes {
        match outcome {
            inject::Outcome::Injected { service } => eprintln!("{name} injected (service {service})"),
            inject::Outcome::AlreadyInjected => {
                eprintln!("{name} skipped: it already has {}", inject::AGENT_CONTAINER)
            }
            inject::Outcome::HostNetwork => {
                eprintln!("{name} skipped: it uses the host's network, which the redirect would capture")
            }
            inject::Outcome::NotAWorkload => {}
        }
    }
    Ok(())
}

/// The key-encryption keys: `TRELLIS_KEK`, or the KEK file (created on first start).
fn keyring(global: &Global, data_dir: &std::path::Path) -> anyhow::Result<trellis_ca::KeyRing> {
    use trellis_pki::keyring;
    if let Some(kek) = &global.kek {
        return Ok(keyring::from_env(kek)?);
    }
    let path = global.kek_file.clone().unwrap_or_else(|| data_dir.join("kek"));
    let (ring, created) = keyring::load_or_create(&path)?;
    if created {
        println!(
            "Created a key-encryption key in {} (it seals every CA key: keep it secret and backed up)",
            path.display()
        );
    }
    Ok(ring)
}

/// `trellis kek rotate`: a new current key in the KEK file, then every sealed key re-wrapped.
async fn rotate_kek(global: &Global, data_dir: &std::path::Path, database: &Database) -> anyhow::Result<()> {
    use trellis_pki::keyring;
    if global.kek.is_some() {
        anyhow::bail!(
            "the KEK comes from TRELLIS_KEK: rotate by moving to a KEK file (TRELLIS_KEK_FILE) that lists the \
             new key first and the current one after it"
        );
    }
    let path = global.kek_file.clone().unwrap_or_else(|| data_dir.join("kek"));
    let old = keyring::read_file(&path)?;
    let new = keyring::new_kek()?;
    let mut keys = vec![&new];
    keys.extend(old.iter());
    keyring::write_file(&path, &keys)?;
    let ring = keyring::from_file(&path)?;
    trellis_store::migrate(&database.roles.owner).await.context("applying migrations")?;
    let store = trellis_store::Store::connect(database.roles.app.clone(), 2).await?;
    let authority = trellis_pki::Authority::new(store.clone(), ring, Default::default());
    let n = authority.reseal_all().await.context("re-wrapping CA keys")?;
    store.close().await;
    println!("new KEK {} is current in {}; {n} CA keys re-wrapped", new.id(), path.display());
    Ok(())
}

/// Creates the organization if needed and prints a new API token for it.
async fn create_token(args: config::CreateToken, database: &Database) -> anyhow::Result<()> {
    use rand::RngCore;
    use trellis_model::{OrgSlug, SECRET_LEN, Token, TokenKind};
    trellis_store::migrate(&database.roles.owner).await.context("applying migrations")?;
    let store = trellis_store::Store::connect(database.roles.app.clone(), 2).await?;
    let org = match &args.org {
        Some(slug) => {
            let slug = OrgSlug::parse(slug).map_err(|e| anyhow::anyhow!("--org {slug:?}: {e}"))?;
            match store.org_by_slug(&slug).await? {
                Some(org) => org,
                None => store.create_org(&slug, args.org_name.as_deref().unwrap_or(slug.as_str())).await?,
            }
        }
        None => {
            let (_, org) = trellis_control::ensure_local_admin(&store, &args.local_org, None)
                .await
                .map_err(|e| anyhow::anyhow!("the local admin's organization: {}", e.detail))?;
            let mut tx = store.tenant(org).await?;
            let org = tx.own_org().await?;
            tx.commit().await?;
            org
        }
    };
    let mut secret = [0u8; SECRET_LEN];
    rand::rng().fill_bytes(&mut secret);
    let token = Token::new(TokenKind::Pat, org.id, secret).to_string();
    let mut tx = store.tenant(org.id).await?;
    tx.create_token(&args.name, args.role, &trellis_api::auth::token_hash(&token), "cli:create-token", None)
        .await?;
    tx.commit().await?;
    store.close().await;
    eprintln!(
        "created a token of role {} for organization {} (shown once; keep it secret):",
        args.role, org.slug
    );
    println!("{token}");
    Ok(())
}

/// Where the data lives: a configured URL or the embedded default.
pub struct Database {
    pub roles: DbRoles,
    pub private: Option<embedded::PrivatePostgres>,
    pub description: String,
}

impl Database {
    async fn resolve(global: &Global, data_dir: &std::path::Path) -> anyhow::Result<Self> {
        if let Some(url) = global.database_url() {
            let owner = PgConnectOptions::from_str(url.expose_secret())
                .context("TRELLIS_DATABASE_URL is not a valid postgres:// URL")?;
            let description = format!(
                "PostgreSQL at {}:{}, database {}",
                owner.get_host(),
                owner.get_port(),
                owner.get_database().unwrap_or("(default)")
            );
            let app_password = global.app_database_password.as_ref().map(|p| p.expose_secret().to_owned());
            return Ok(Database {
                roles: DbRoles::from_owner(owner, app_password.as_deref()),
                private: None,
                description,
            });
        }
        let e = embedded::resolve(global, data_dir).await?;
        Ok(Database { roles: e.roles, private: e.private, description: e.description })
    }
}

fn init_logging(global: &Global) {
    let filter = tracing_subscriber::EnvFilter::try_new(&global.log).unwrap_or_else(|e| {
        eprintln!("trellis: ignoring invalid TRELLIS_LOG {:?}: {e}", global.log);
        tracing_subscriber::EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match global.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
