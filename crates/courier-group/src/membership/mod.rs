//! Membership: which engines are in a group, and which of them are alive
//! (issue 21, item 1).
//!
//! SWIM, as the `foca` crate implements it: each member probes another at
//! random every probe period, asks others to probe a member that does not
//! answer, suspects it, and declares it down if it does not refute the
//! suspicion in time; what each learns travels along with the probes, and
//! by gossip. foca's messages ride on Courier's own one-way RPCs
//! ([`SWIM_RPC`]), so a group works on every transport an engine speaks,
//! address sets included; one tokio task per group runs foca, so no
//! handler ever waits on it.
//!
//! A member is its engine's address plus a generation, new at each start
//! and at each rejoin: a member restarted at the same address, or declared
//! down while it was alive, comes back as a newer member of that address.
//!
//! ```
//! use courier::Engine;
//! use courier_group::{Group, GroupOptions, MemberState};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (a, b) = (Engine::new("mem").await?, Engine::new("mem").await?);
//! let first = Group::create(&a, "kv", GroupOptions::default()).await?;
//! let second = Group::join(&b, "kv", &first.address(), GroupOptions::default()).await?;
//!
//! // Wait (within a bound) until the first member sees the second.
//! let mut views = first.watch();
//! let seen = views.wait_for(|v| v.state_of(&second.address()) == Some(MemberState::Alive));
//! tokio::time::timeout(std::time::Duration::from_secs(10), seen).await??;
//!
//! second.leave().await?;
//! let mut views = first.watch();
//! let gone = views.wait_for(|v| v.state_of(&second.address()) == Some(MemberState::Left));
//! tokio::time::timeout(std::time::Duration::from_secs(10), gone).await??;
//! assert_eq!(first.view().live().count(), 1);
//! # Ok(()) }
//! ```

mod driver;
mod error;
mod file;
mod id;
mod options;
mod view;
mod wire;

use std::collections::{BinaryHeap, HashMap};
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use courier::{Engine, Mode};
use rand::SeedableRng;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub use error::{MembershipError, Result};
pub use file::GroupFile;
pub use options::*;
pub use view::{Change, Member, MemberState, View};
pub use wire::{Dropped, LEAVE_RPC, SWIM_RPC, VIEW_RPC, WIRE_VERSION};

use driver::{Command, Driver};
use id::Id;
use wire::{Route, Router};

/// A member of a group: this engine's membership, run by a task of its own.
///
/// Made by [`Group::create`], [`Group::join`], [`Group::join_any`] or
/// [`Group::open`]; read with [`Group::view`] and [`Group::watch`]; ended
/// by [`Group::leave`]. Cloning is cheap and gives another handle on the
/// same membership. When every handle is dropped without a leave, the
/// membership stops as if the process had died: the others declare it
/// down. When its engine finalizes ([`Engine::finalize`], or a remote
/// shutdown), it leaves first, as [`Group::leave`] does, while the engine
/// can still send; an engine dropped without finalize stops it as a death
/// would. While it runs, it keeps a handle on its engine.
///
/// A group is also the [`crate::Members`] a group call chooses from: its
/// live members (alive or suspected) and its view's version.
#[derive(Debug, Clone)]
pub struct Group {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: String,
    address: String,
    options: GroupOptions,
    engine: Engine,
    commands: mpsc::Sender<Command>,
    view: watch::Receiver<View>,
    active: watch::Receiver<bool>,
    router: Arc<Router>,
    token: u64,
    /// The task that keeps the group file, if the group has one.
    file_keeper: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.router.remove(&self.name, self.token);
    }
}

impl Group {
    /// Starts a new group named `name`, with this engine its only member.
    ///
    /// # Errors
    /// [`MembershipError::NotListening`] (a client-mode engine),
    /// [`MembershipError::Options`], [`MembershipError::AlreadyMember`],
    /// [`MembershipError::Register`], [`MembershipError::NoRuntime`].
    pub async fn create(engine: &Engine, name: &str, options: GroupOptions) -> Result<Self> {
        Self::start(engine, name, options)
    }

    /// Joins group `name` through the member at `via` (an address as
    /// `lookup` takes it): asks it for its view, then announces itself,
    /// and returns once a member has taken it in, within
    /// [`GroupOptions::join_timeout`].
    ///
    /// # Errors
    /// [`MembershipError::NoMemberAnswered`] (it could not be reached, is
    /// not a member of `name`, or took no one in within the join timeout),
    /// and those of [`Group::create`].
    pub async fn join(
        engine: &Engine,
        name: &str,
        via: &str,
        options: GroupOptions,
    ) -> Result<Self> {
        Self::join_any(engine, name, &[via], options).await
    }

    /// Joins group `name` through the first of `addresses` (a static list)
    /// that takes it in, trying each in turn (this engine's own address is
    /// skipped).
    ///
    /// # Errors
    /// [`MembershipError::NoAddress`] (no address but this engine's),
    /// [`MembershipError::NoMemberAnswered`] (what each address did), and
    /// those of [`Group::create`].
    pub async fn join_any(
        engine: &Engine,
        name: &str,
        addresses: &[impl AsRef<str>],
        options: GroupOptions,
    ) -> Result<Self> {
        let group = Self::start(engine, name, options)?;
        let mut tried = Vec::new();
        for address in addresses.iter().map(AsRef::as_ref) {
            if address == group.inner.address {
                continue;
            }
            match group.try_join(address).await {
                Ok(()) => return Ok(group),
                Err(why) => {
                    tracing::debug!(group = name, address, "could not join through it: {why}");
                    tried.push(format!("{address}: {why}"));
                }
            }
        }
        if tried.is_empty() {
            return Err(MembershipError::NoAddress {
                group: name.to_owned(),
            });
        }
        Err(MembershipError::NoMemberAnswered {
            group: name.to_owned(),
            tried: tried.join("; "),
        })
    }

    /// Creates or joins the group of the group file at `path`, and keeps
    /// the file: it is rewritten (atomically) with the live members
    /// whenever this member's view of them changes.
    ///
    /// If there is no file, a new group is created, named after the file
    /// (`kv.json`: group `kv`), and the file is written (if another
    /// process wrote one meanwhile, this joins through it instead). If
    /// there is one, this joins through the members it lists, trying each;
    /// a file that lists no member but this engine starts the group anew.
    ///
    /// # Errors
    /// [`MembershipError::FileUnreadable`], [`MembershipError::FileMalformed`],
    /// [`MembershipError::FileStale`] (no member listed answered),
    /// [`MembershipError::FileWrite`], each naming the file; and those of
    /// [`Group::create`].
    pub async fn open(
        engine: &Engine,
        path: impl AsRef<Path>,
        options: GroupOptions,
    ) -> Result<Self> {
        let path = path.as_ref();
        let file = match GroupFile::read(path) {
            Ok(file) => file,
            Err(MembershipError::FileMissing { .. }) => {
                let name = file::group_name_of(path)?;
                let group = Self::start(engine, &name, options.clone())?;
                let file = GroupFile {
                    group: name,
                    wire_version: WIRE_VERSION,
                    members: vec![group.address()],
                };
                if file.create_new(path)? {
                    tracing::info!(group = %file.group, file = %path.display(), "created the group and its file");
                    group.keep_file(path.to_owned());
                    return Ok(group);
                }
                // Another process wrote it first: join its group.
                drop(group);
                GroupFile::read(path)?
            }
            Err(e) => return Err(e),
        };
        let me = engine.address().to_string();
        let others: Vec<&String> = file.members.iter().filter(|a| **a != me).collect();
        let group = if others.is_empty() {
            tracing::info!(group = %file.group, file = %path.display(), "the group file lists no other member: starting the group anew");
            Self::start(engine, &file.group, options)?
        } else {
            match Self::join_any(engine, &file.group, &others, options).await {
                Ok(group) => group,
                Err(MembershipError::NoMemberAnswered { group, tried }) => {
                    return Err(MembershipError::FileStale {
                        path: path.to_owned(),
                        group,
                        tried,
                    })
                }
                Err(e) => return Err(e),
            }
        };
        group.keep_file(path.to_owned());
        Ok(group)
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// This member's address (its engine's).
    pub fn address(&self) -> String {
        self.inner.address.clone()
    }

    /// The options the group runs with.
    pub fn options(&self) -> &GroupOptions {
        &self.inner.options
    }

    /// This member's view now.
    pub fn view(&self) -> View {
        self.inner.view.borrow().clone()
    }

    /// The view as it changes: `changed().await`, or `wait_for(condition)`
    /// (bound it with a timeout). It closes when the membership stops.
    pub fn watch(&self) -> watch::Receiver<View> {
        self.inner.view.clone()
    }

    /// Messages this engine received for its groups and did not apply,
    /// counted by reason since its first group started.
    pub fn dropped(&self) -> Dropped {
        self.inner.router.counters.snapshot()
    }

    /// Whether the membership still runs (not left, engine not finalized,
    /// task not stopped).
    pub fn is_running(&self) -> bool {
        !self.inner.commands.is_closed()
    }

    /// Leaves the group: tells the members it knows alive (they see it as
    /// [`MemberState::Left`]), has foca declare it down, and stops, once
    /// those messages are sent and the group file (if any) is rewritten
    /// without this member.
    ///
    /// # Errors
    /// [`MembershipError::Stopped`] when the membership had already
    /// stopped (left before, or its engine finalized).
    pub async fn leave(&self) -> Result<()> {
        let stopped = || MembershipError::Stopped {
            group: self.inner.name.clone(),
        };
        let (done, left) = oneshot::channel();
        self.inner
            .commands
            .send(Command::Leave { done })
            .await
            .map_err(|_| stopped())?;
        left.await.map_err(|_| stopped())?;
        // Until the task has ended.
        self.inner.commands.closed().await;
        // The task has stopped: the file keeper writes the last view, ends.
        let keeper = self
            .inner
            .file_keeper
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(keeper) = keeper {
            let _ = keeper.await;
        }
        Ok(())
    }

    /// Reads the view of the member at `address` (`group`: which of its
    /// groups; `None`: its only, or first, one), waiting at most `timeout`.
    ///
    /// # Errors
    /// [`MembershipError::View`]: the lookup failed, the call timed out,
    /// the member is in no such group.
    pub async fn view_at(
        engine: &Engine,
        address: &str,
        group: Option<&str>,
        timeout: Duration,
    ) -> Result<View> {
        let failed = |source| MembershipError::View {
            group: group.unwrap_or("*").to_owned(),
            address: address.to_owned(),
            source: Box::new(source),
        };
        let work = async {
            let at = engine.lookup(address).await?;
            engine
                .remote::<Option<&str>, View>(VIEW_RPC)
                .on(&at)
                .timeout(timeout)
                .call(&group)
                .await
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result.map_err(failed),
            Err(_) => Err(failed(courier::Error::ConnectTimeout {
                address: address.to_owned(),
                after: timeout,
            })),
        }
    }

    /// Reads the view of the group of the group file at `path` from the
    /// first member it lists that answers, waiting at most `timeout` for
    /// each.
    ///
    /// # Errors
    /// The file's errors ([`MembershipError::FileMissing`], ...), and
    /// [`MembershipError::FileStale`] when no member listed answered.
    pub async fn view_from_file(engine: &Engine, path: &Path, timeout: Duration) -> Result<View> {
        let file = GroupFile::read(path)?;
        let mut tried = Vec::new();
        for address in &file.members {
            match Self::view_at(engine, address, Some(&file.group), timeout).await {
                Ok(view) => return Ok(view),
                Err(e) => tried.push(format!("{address}: {e}")),
            }
        }
        Err(MembershipError::FileStale {
            path: path.to_owned(),
            group: file.group,
            tried: if tried.is_empty() {
                "it lists no member".to_owned()
            } else {
                tried.join("; ")
            },
        })
    }

    /// Starts this engine's membership task for group `name`.
    fn start(engine: &Engine, name: &str, options: GroupOptions) -> Result<Self> {
        let config = options.to_foca()?;
        if name.is_empty() {
            return Err(MembershipError::Options(
                "a group's name cannot be empty".to_owned(),
            ));
        }
        if engine.mode() == Mode::Client {
            return Err(MembershipError::NotListening {
                group: name.to_owned(),
            });
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(MembershipError::NoRuntime {
                group: name.to_owned(),
            });
        }
        let router = wire::router_of(engine).map_err(|source| MembershipError::Register {
            group: name.to_owned(),
            source: Box::new(source),
        })?;
        let address = engine.address().to_string();
        let me = Id::new(address.clone());
        let (view_tx, view_rx) = watch::channel(View {
            group: name.to_owned(),
            viewer: address.clone(),
            version: 0,
            members: vec![Member {
                address: address.clone(),
                state: MemberState::Alive,
                generation: me.generation,
            }],
        });
        let (active_tx, active_rx) = watch::channel(false);
        let (inbox_tx, inbox_rx) = mpsc::channel(wire::INBOX_CAPACITY);
        let (commands_tx, commands_rx) = mpsc::channel(8);
        static TOKENS: AtomicU64 = AtomicU64::new(0);
        let token = TOKENS.fetch_add(1, Ordering::Relaxed);
        let added = router.add(
            name,
            Route {
                inbox: inbox_tx,
                view: view_rx.clone(),
                token,
            },
        );
        if !added {
            return Err(MembershipError::AlreadyMember {
                group: name.to_owned(),
                address,
            });
        }
        let seed = std::collections::hash_map::RandomState::new().hash_one(&me);
        let (swim, leave) = driver::functions(engine);
        let driver = Driver {
            foca: foca::Foca::new(
                me,
                config,
                rand::rngs::SmallRng::seed_from_u64(seed),
                foca::PostcardCodec,
            ),
            runtime: foca::AccumulatingRuntime::new(),
            due: BinaryHeap::new(),
            timers: HashMap::new(),
            next_timer: 0,
            engine: engine.clone(),
            group: name.into(),
            swim,
            leave,
            send_timeout: options.probe_period,
            departed: HashMap::new(),
            left: false,
            view: view_tx,
            active: active_tx,
            router: router.clone(),
            token,
        };
        tokio::spawn(driver.run(inbox_rx, commands_rx));
        tracing::debug!(group = name, %address, "membership started");
        let group = Self {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                address,
                options,
                engine: engine.clone(),
                commands: commands_tx,
                view: view_rx,
                active: active_rx,
                router,
                token,
                file_keeper: Mutex::new(None),
            }),
        };
        group.leave_on_finalize();
        Ok(group)
    }

    /// A member whose engine finalizes (`finalize()`, a remote shutdown)
    /// leaves first, while the engine can still send its goodbyes. The
    /// engine keeps only a weak handle: a membership whose handles are all
    /// dropped still stops as a death would.
    fn leave_on_finalize(&self) {
        let member = Arc::downgrade(&self.inner);
        self.inner.engine.on_prefinalize_async(move || async move {
            let Some(inner) = member.upgrade() else {
                return;
            };
            let group = Self { inner };
            // Stopped already (left, or dropped): nothing to say.
            if group.leave().await.is_ok() {
                tracing::debug!(group = %group.name(), "left the group as the engine finalized");
            }
        });
    }

    /// One join attempt through `address`: is it a member of this group?
    /// Then announce, and wait to be taken in.
    async fn try_join(&self, address: &str) -> std::result::Result<(), String> {
        let timeout = self.inner.options.join_timeout;
        Self::view_at(&self.inner.engine, address, Some(&self.inner.name), timeout)
            .await
            .map_err(|e| match e {
                MembershipError::View { source, .. } => source.to_string(),
                other => other.to_string(),
            })?;
        // An announce, or the answer to it, may be lost like any SWIM
        // message: announce again every probe period until taken in.
        let deadline = tokio::time::Instant::now() + timeout;
        let every = self.inner.options.probe_period.min(timeout);
        let mut active = self.inner.active.clone();
        loop {
            let (sent, outcome) = oneshot::channel();
            self.inner
                .commands
                .send(Command::Announce {
                    address: address.to_owned(),
                    sent,
                })
                .await
                .map_err(|_| "the group's task has stopped".to_owned())?;
            outcome
                .await
                .map_err(|_| "the group's task has stopped".to_owned())??;
            let until = (tokio::time::Instant::now() + every).min(deadline);
            match tokio::time::timeout_at(until, active.wait_for(|a| *a)).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(_)) => return Err("the group's task has stopped".to_owned()),
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(format!("it took no one in within {timeout:?}"))
                }
                Err(_) => {}
            }
        }
    }

    /// Keeps the group file at `path` up to date with the live members.
    fn keep_file(&self, path: PathBuf) {
        let mut views = self.inner.view.clone();
        let name = self.inner.name.clone();
        let task = tokio::spawn(async move {
            let mut written: Option<Vec<String>> = None;
            loop {
                let members: Vec<String> = views
                    .borrow_and_update()
                    .live()
                    .map(|m| m.address.clone())
                    .collect();
                if written.as_ref() != Some(&members) {
                    let file = GroupFile {
                        group: name.clone(),
                        wire_version: WIRE_VERSION,
                        members: members.clone(),
                    };
                    let at = path.clone();
                    match tokio::task::spawn_blocking(move || file.write(&at)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::warn!(group = %name, "{e}"),
                        Err(e) => {
                            tracing::warn!(group = %name, "the group file's writer failed: {e}")
                        }
                    }
                    written = Some(members);
                }
                if views.changed().await.is_err() {
                    break;
                }
            }
        });
        *self
            .inner
            .file_keeper
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(task);
    }
}

impl crate::Members for Group {
    fn live(&self) -> Vec<String> {
        self.inner
            .view
            .borrow()
            .live()
            .map(|m| m.address.clone())
            .collect()
    }

    fn version(&self) -> u64 {
        self.inner.view.borrow().version
    }
}
