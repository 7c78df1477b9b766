//! Leader election for background duties, through a PostgreSQL advisory lock held on a
//! dedicated connection.
//!
//! Leadership is a lease: the holder counts as leader only until `lease` after the last
//! moment its connection was known to be alive, and a new holder waits `lease` after
//! taking the lock before it claims the role. PostgreSQL frees the lock only when the old
//! holder's session is gone, so the two never lead at the same time, even when the old
//! holder cannot tell that its connection died.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};

/// Tuning of the election.
#[derive(Debug, Clone)]
pub struct LeaderOptions {
    /// The advisory lock key; one election per key and database.
    pub key: i64,
    /// How often a leader proves its connection alive.
    pub check_every: Duration,
    /// How long one proof keeps the role; must exceed `check_every`.
    pub lease: Duration,
    /// How often a follower tries to take the lock.
    pub retry_every: Duration,
    /// Shown in `pg_stat_activity` for the election connection.
    pub application_name: String,
}

impl Default for LeaderOptions {
    fn default() -> Self {
        LeaderOptions {
            key: 0x7472_656c_6c69,
            check_every: Duration::from_millis(500),
            lease: Duration::from_secs(2),
            retry_every: Duration::from_millis(500),
            application_name: "trellis-leader".into(),
        }
    }
}

/// Takes part in one election until stopped.
#[derive(Debug)]
pub struct LeaderElector {
    leading_until: Arc<Mutex<Option<Instant>>>,
    changes: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl LeaderElector {
    /// Starts campaigning with a dedicated connection made from `connect`.
    pub fn start(connect: PgConnectOptions, options: LeaderOptions) -> Self {
        assert!(options.lease > options.check_every, "lease must exceed check_every");
        let leading_until = Arc::new(Mutex::new(None));
        let (changes_tx, changes) = watch::channel(false);
        let (stop, stopped) = watch::channel(false);
        let campaign = Campaign {
            connect: connect.application_name(&options.application_name),
            options,
            leading_until: leading_until.clone(),
            changes: changes_tx,
        };
        let task = tokio::spawn(campaign.run(stopped));
        LeaderElector { leading_until, changes, stop, task }
    }

    /// Is this instance the leader right now? Reads the lease, so it turns false on time
    /// even while the campaign task is blocked on a dead connection.
    pub fn is_leader(&self) -> bool {
        lease_valid(&self.leading_until)
    }

    /// Transitions of the role, for duties that start and stop with it.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.changes.clone()
    }

    /// Steps down (releasing the lock) and stops campaigning.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn lease_valid(until: &Mutex<Option<Instant>>) -> bool {
    matches!(*until.lock().expect("lease lock"), Some(t) if Instant::now() < t)
}

struct Campaign {
    connect: PgConnectOptions,
    options: LeaderOptions,
    leading_until: Arc<Mutex<Option<Instant>>>,
    changes: watch::Sender<bool>,
}

impl Campaign {
    async fn run(self, mut stopped: watch::Receiver<bool>) {
        loop {
            let conn = tokio::select! {
                c = timeout(self.options.lease, PgConnection::connect_with(&self.connect)) => c,
                _ = stopped.wait_for(|s| *s) => return,
            };
            let Ok(Ok(mut conn)) = conn else {
                tracing::debug!("leader election: cannot connect; retrying");
                tokio::select! {
                    _ = sleep(self.options.retry_every) => continue,
                    _ = stopped.wait_for(|s| *s) => return,
                }
            };
            let stop_requested = tokio::select! {
                () = self.hold(&mut conn) => false,
                _ = stopped.wait_for(|s| *s) => true,
            };
            self.step_down();
            if stop_requested {
                // Release promptly so another instance need not wait for the session to end.
                let _ = timeout(
                    Duration::from_secs(1),
                    sqlx::query("SELECT pg_advisory_unlock($1)").bind(self.options.key).execute(&mut conn),
                )
                .await;
                let _ = timeout(Duration::from_secs(1), conn.close()).await;
                return;
            }
        }
    }

    /// Campaigns and leads on one connection; returns when the connection fails.
    async fn hold(&self, conn: &mut PgConnection) {
        let o = &self.options;
        // Follow until the lock is ours.
        loop {
            let got = timeout(
                o.lease,
                sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
                    .bind(o.key)
                    .fetch_one(&mut *conn),
            )
            .await;
            match got {
                Ok(Ok(true)) => break,
                Ok(Ok(false)) => sleep(o.retry_every).await,
                _ => return,
            }
        }
        // A previous holder may still believe in its lease; let it run out first.
        sleep(o.lease).await;
        loop {
            let started = Instant::now();
            match timeout(o.lease, sqlx::query("SELECT 1").execute(&mut *conn)).await {
                Ok(Ok(_)) => self.renew(started + o.lease),
                _ => return,
            }
            sleep(o.check_every).await;
        }
    }

    fn renew(&self, until: Instant) {
        *self.leading_until.lock().expect("lease lock") = Some(until);
        self.changes.send_if_modified(|leading| {
            let was = *leading;
            *leading = true;
            if !was {
                tracing::info!("this instance is now the leader");
            }
            !was
        });
    }

    fn step_down(&self) {
        *self.leading_until.lock().expect("lease lock") = None;
        self.changes.send_if_modified(|leading| {
            let was = *leading;
            *leading = false;
            if was {
                tracing::warn!("this instance stepped down as leader");
            }
            was
        });
    }
}
