//! The servers `serve` serves now: each one's settings, its quota in the
//! session table and its warm pool, by name.
//!
//! A session holds its server by `Arc` for its whole life, so a reload
//! (SIGHUP) that changes or removes a server never touches a session that
//! is running: the old `Server` lives on until its last session ends, and
//! only new sessions see the new one. A changed server gets a new warm
//! pool (its waiting children were started with the old command); an
//! unchanged one keeps its `Arc`, warm children and all.

use std::sync::Arc;

use log::info;

use crate::child::process::Spawner;
use crate::child::warm::WarmPool;
use crate::config::ServerSpec;
use crate::session::table::{Quota, Sessions};

/// One server, as new sessions get it.
pub struct Server {
    pub spec: ServerSpec,
    pub quota: Quota,
    /// `prespawn` children, when it asks for some.
    pub warm: Option<WarmPool>,
}

impl Server {
    fn start(
        spec: ServerSpec,
        named: bool,
        spawner: &Spawner,
        sessions: &Sessions,
    ) -> std::io::Result<Server> {
        let quota = Quota {
            server: spec.name.as_str().into(),
            max_sessions: spec.limits.max_sessions,
            max_per_client: spec.limits.max_sessions_per_client,
            named,
        };
        let warm = if spec.prespawn > 0 {
            let live = sessions.clone();
            let name = Arc::clone(&quota.server);
            let prefix = if named {
                format!("warm-{}-", spec.name)
            } else {
                "warm-".into()
            };
            Some(WarmPool::start(
                prefix,
                spec.prespawn,
                spec.limits.max_sessions,
                spec.command.clone(),
                spawner.clone(),
                move || live.live_for(&name),
            )?)
        } else {
            None
        };
        Ok(Server { spec, quota, warm })
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Children waiting in its warm pool.
    pub fn warm_len(&self) -> usize {
        self.warm.as_ref().map_or(0, WarmPool::len)
    }
}

/// What a reload did, by server name, for its log line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: usize,
}

impl std::fmt::Display for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |names: &[String]| {
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        };
        write!(
            f,
            "added {}; changed {}; removed {}; {} unchanged",
            list(&self.added),
            list(&self.changed),
            list(&self.removed),
            self.unchanged
        )
    }
}

/// Every server new sessions may be admitted to.
pub struct Catalog {
    servers: Vec<Arc<Server>>,
    /// Servers come from a `--config` file (refusals name them).
    named: bool,
}

impl Catalog {
    /// Starts `specs` (their warm pools).
    pub fn start(
        specs: Vec<ServerSpec>,
        named: bool,
        spawner: &Spawner,
        sessions: &Sessions,
    ) -> std::io::Result<Catalog> {
        let servers = specs
            .into_iter()
            .map(|spec| Server::start(spec, named, spawner, sessions).map(Arc::new))
            .collect::<std::io::Result<_>>()?;
        Ok(Catalog { servers, named })
    }

    pub fn find(&self, name: &str) -> Option<&Arc<Server>> {
        self.servers.iter().find(|s| s.name() == name)
    }

    /// The server `/mcp` (and a path without a server name) reaches: the
    /// only one, when there is only one.
    pub fn only(&self) -> Option<&Arc<Server>> {
        match self.servers.as_slice() {
            [only] => Some(only),
            _ => None,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Server>> {
        self.servers.iter()
    }

    pub fn names(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.spec.name.clone()).collect()
    }

    /// Sessions every server may hold at once, together.
    pub fn max_sessions(&self) -> usize {
        max_sessions(self.servers.iter().map(|s| &s.spec))
    }

    /// The largest message any server takes: what the HTTP front end
    /// reads before it knows a request's server.
    pub fn max_message_bytes(&self) -> usize {
        self.servers
            .iter()
            .map(|s| s.spec.limits.max_message_bytes)
            .max()
            .unwrap_or(0)
    }

    /// A session ended: a warm pool may have room again.
    pub fn nudge(&self) {
        for server in &self.servers {
            if let Some(warm) = &server.warm {
                warm.nudge();
            }
        }
    }

    /// Takes the servers of a reloaded file. Unchanged ones are kept as
    /// they are; changed and new ones start afresh.
    pub fn replace(
        &mut self,
        specs: Vec<ServerSpec>,
        spawner: &Spawner,
        sessions: &Sessions,
    ) -> std::io::Result<Changes> {
        let mut changes = Changes::default();
        let mut next = Vec::with_capacity(specs.len());
        for spec in specs {
            match self.find(&spec.name) {
                Some(old) if old.spec == spec => {
                    changes.unchanged += 1;
                    next.push(Arc::clone(old));
                }
                found => {
                    let list = if found.is_some() {
                        &mut changes.changed
                    } else {
                        &mut changes.added
                    };
                    list.push(spec.name.clone());
                    next.push(Arc::new(Server::start(
                        spec, self.named, spawner, sessions,
                    )?));
                }
            }
        }
        for old in &self.servers {
            if !next.iter().any(|s| s.name() == old.name()) {
                changes.removed.push(old.spec.name.clone());
            }
        }
        for old in std::mem::replace(&mut self.servers, next) {
            if !self.servers.iter().any(|s| Arc::ptr_eq(s, &old)) {
                retire(&old);
            }
        }
        Ok(changes)
    }

    /// Ends every warm pool; call before the reaper stops.
    pub fn stop(&mut self) {
        for server in std::mem::take(&mut self.servers) {
            retire(&server);
        }
    }
}

/// Sessions the servers of `specs` may hold at once, together.
pub fn max_sessions<'a>(specs: impl IntoIterator<Item = &'a ServerSpec>) -> usize {
    specs
        .into_iter()
        .map(|s| s.limits.max_sessions)
        .fold(0, usize::saturating_add)
}

/// A server new sessions will no longer get: its waiting children are
/// ended now rather than when its last session lets go of it.
fn retire(server: &Server) {
    if let Some(warm) = &server.warm {
        if !warm.is_empty() {
            info!(
                "server {}: ending its {} waiting warm children",
                server.name(),
                warm.len()
            );
        }
        warm.stop();
    }
}
