//! One actor per remote field (a task's form field or a template's kick-off field).
//! Verifies the target at start, then receives attach and delete requests from the sync
//! workers and applies each batch with one read and at most one write of the field, so a burst
//! of files costs a few PUTs and two PUTs to one field never race (no lost update).
//! Owns the rule that assets attached by anyone else stay in the field, the count of files on
//! their way to it, which says whether a batch should wait for more, and notices synced files
//! someone removed from the field in Tallyfy (each time it reads the field, and once per
//! `rescan_interval`), leaving or restoring them as their folder's `remote_removed` says.

mod verify;

pub(crate) use verify::is_required;
pub use verify::{
    missing_or_forbidden, names_key, verify, LaunchForm, Names, Resolved, MAX_RUN_NAME,
};

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::api::{self, raw, ApiError, Client, RawList};
use crate::config::{RemoteRemoved, Target};
use crate::metrics::METRICS;
use crate::store::{now_unix, Asset, DeleteJob, DeleteKind, FileState, Store};
use verify::{forbidden, inspect};

/// Most requests one batch takes: bounds the size of a PUT body.
const MAX_BATCH: usize = 500;
/// A batch that keeps growing (a long steady stream of files) goes at the latest this many
/// `attach_delay`s after its first request, so the stream's first files are not held for
/// minutes.
const MAX_BATCH_WAIT: u32 = 30;
/// How long the field's value as last read or written answers a read (a file looking for a copy
/// of itself already there) without another GET: the actor is the field's only writer here, so
/// only a file attached by hand within this time can be missing from it, and then the file is
/// uploaded beside it, as without the look.
const READ_FRESH: Duration = Duration::from_secs(10);
/// The soonest an invalid target is inspected again when a file asks for it: a route folder's
/// task that was closed when its first file came may be reopened, and a burst of files for it
/// must not cost a GET each.
const REVERIFY_AFTER: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum FieldError {
    #[error("{0}")]
    Api(#[from] ApiError),
    #[error("the target is misconfigured: {0}")]
    Invalid(String),
    #[error(
        "the API accepted the update of {target} but the answer does not list asset {asset}: {why}"
    )]
    NotListed {
        target: String,
        asset: String,
        why: String,
    },
    #[error("the API refused the update: {0}")]
    Refused(String),
    #[error("shutting down")]
    Cancelled,
}

#[derive(Debug, Clone)]
enum Readiness {
    Verifying,
    Ready(Arc<Resolved>),
    Invalid(String),
}

enum Request {
    Attach {
        asset: Asset,
        replaces: Option<String>,
        reply: oneshot::Sender<Result<(), FieldError>>,
    },
    Delete {
        job: DeleteJob,
        reply: Option<oneshot::Sender<Result<(), FieldError>>>,
    },
    /// The field's value as it is now.
    Read {
        reply: oneshot::Sender<Result<Arc<FieldValue>, FieldError>>,
    },
}

/// How the actor watches for files removed from the field in Tallyfy.
pub struct Removals {
    /// Each folder mapped to this field, with its `remote_removed`.
    pub folders: Vec<(PathBuf, RemoteRemoved)>,
    /// How often the field is read for this when nothing else reads it.
    pub every: Duration,
    /// Files to look at again now: one that must be uploaded again.
    pub recheck: mpsc::UnboundedSender<PathBuf>,
}

/// Files a sync worker is working on for this field that have not reached the actor yet
/// (uploading, waiting for an upload slot or for the rate limit's bucket).
#[derive(Default)]
struct Expected {
    files: AtomicUsize,
    /// Told whenever `files` goes down.
    fewer: Notify,
}

/// One file on its way to the field: counted from `FieldHandle::expect` until the worker
/// hands its request to the actor or gives up (drops it).
pub struct OnItsWay {
    expected: Arc<Expected>,
    released: AtomicBool,
}

impl OnItsWay {
    fn release(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            self.expected.files.fetch_sub(1, Ordering::AcqRel);
            self.expected.fewer.notify_waiters();
        }
    }
}

impl Drop for OnItsWay {
    fn drop(&mut self) {
        self.release();
    }
}

tokio::task_local! {
    /// The queue's place of the file the current task works on, when it runs under one.
    pub static PLACE: Place;
}

/// A file's place among those the queue lets work at once. Given back as soon as the file's
/// request is in its field's inbox: while it waits for the field's batch another file can be
/// uploaded, so uploads keep flowing instead of pausing for every batch.
pub struct Place(std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>);

impl Place {
    pub fn new(permit: Option<tokio::sync::OwnedSemaphorePermit>) -> Place {
        Place(std::sync::Mutex::new(permit))
    }

    fn give_back(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// The sync workers' handle on a field actor.
#[derive(Clone)]
pub struct FieldHandle {
    requests: mpsc::Sender<Request>,
    readiness: watch::Receiver<Readiness>,
    expected: Arc<Expected>,
    /// Asks the actor to inspect an invalid target again.
    reverify: Arc<Notify>,
    known: Arc<Known>,
}

/// The field's value as the actor last read or written it, and when.
type Known = std::sync::Mutex<Option<(Instant, Arc<FieldValue>)>>;

/// The value in `known`, while it is under `READ_FRESH` old.
fn fresh(known: &Known) -> Option<Arc<FieldValue>> {
    known
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .filter(|(at, _)| at.elapsed() < READ_FRESH)
        .map(|(_, value)| value.clone())
}

/// `current` with the assets of `attach` added (each in place of the one it replaces) and
/// those of `removed` left out; whether that changed anything.
fn merge(
    current: RawList,
    attach: &[(Asset, Option<String>)],
    removed: &HashSet<String>,
) -> (RawList, bool) {
    let before = current.len();
    // Each asset's id, read once: the field can list thousands.
    let mut list: Vec<(Option<String>, Box<RawValue>)> = current
        .into_iter()
        .map(|item| (raw::asset_keys(&item).0, item))
        .filter(|(id, _)| !id.as_ref().is_some_and(|id| removed.contains(id)))
        .collect();
    let mut changed = list.len() != before;
    // Positions by id, so a batch of hundreds costs one pass over the field, not one each.
    let mut slots: HashMap<String, usize> = list
        .iter()
        .enumerate()
        .filter_map(|(index, (id, _))| Some((id.clone()?, index)))
        .collect();
    for (asset, replaces) in attach {
        let id = asset.id().unwrap_or_default();
        if slots.contains_key(&id) {
            continue;
        }
        changed = true;
        let entry = (Some(id.clone()), raw::of(&asset.0));
        let index = match replaces.as_ref().and_then(|old| slots.remove(old)) {
            Some(index) => {
                list[index] = entry;
                index
            }
            None => {
                list.push(entry);
                list.len() - 1
            }
        };
        slots.insert(id, index);
    }
    // Replaced assets leave the field even when they were not where we expected them.
    let replaced: HashSet<&String> = attach
        .iter()
        .filter_map(|(_, replaces)| replaces.as_ref())
        .collect();
    let kept_new: HashSet<String> = attach.iter().filter_map(|(asset, _)| asset.id()).collect();
    let before = list.len();
    list.retain(|(id, _)| {
        id.as_ref()
            .is_none_or(|id| kept_new.contains(id) || !replaced.contains(id))
    });
    let changed = changed || list.len() != before;
    (list.into_iter().map(|(_, item)| item).collect(), changed)
}

fn name_hash(name: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(name)
}

/// Lets go of the value in `known` once it no longer answers reads: a field of 20,000 files
/// would otherwise keep megabytes for nothing while the folder is idle.
fn forget_stale(known: &Known) {
    let mut known = known.lock().unwrap_or_else(|p| p.into_inner());
    if known
        .as_ref()
        .is_some_and(|(at, _)| at.elapsed() >= READ_FRESH)
    {
        *known = None;
    }
}

impl FieldHandle {
    /// Starts the actor for `target`; it verifies the target before anything is sent to it.
    /// `attach_delay` bounds how long a batch waits for files still on their way.
    pub fn spawn(
        target: Target,
        api: Arc<Client>,
        store: Store,
        removals: Removals,
        attach_delay: Duration,
        cancel: CancellationToken,
    ) -> (FieldHandle, tokio::task::JoinHandle<()>) {
        let (requests, inbox) = mpsc::channel(MAX_BATCH);
        let (ready_tx, readiness) = watch::channel(Readiness::Verifying);
        let expected = Arc::new(Expected::default());
        let reverify = Arc::new(Notify::new());
        let known = Arc::new(Known::default());
        let actor = Actor {
            target,
            api,
            store,
            removals,
            known: known.clone(),
            seen: std::sync::Mutex::new(None),
            attach_delay,
            expected: expected.clone(),
            reverify: reverify.clone(),
            cancel,
        };
        let task = tokio::spawn(actor.run(inbox, ready_tx));
        (
            FieldHandle {
                requests,
                readiness,
                expected,
                reverify,
                known,
            },
            task,
        )
    }

    /// Counts a file a worker starts on, so that the actor's batch waits for it.
    pub fn expect(&self) -> OnItsWay {
        self.expected.files.fetch_add(1, Ordering::AcqRel);
        OnItsWay {
            expected: self.expected.clone(),
            released: AtomicBool::new(false),
        }
    }

    /// A file that may send this actor a delete but never an attach (a launch folder's
    /// upload, which goes to a process): no batch waits for it.
    pub fn uncounted(&self) -> OnItsWay {
        OnItsWay {
            expected: self.expected.clone(),
            released: AtomicBool::new(true),
        }
    }

    /// Waits for the target's verification; `None` when it is invalid or we are shutting down.
    pub async fn ready(&self) -> Option<Arc<Resolved>> {
        self.verdict().await?.ok()
    }

    /// Waits for the target's verification: the target, or what is wrong with it; `None`
    /// when we are shutting down.
    pub async fn verdict(&self) -> Option<Result<Arc<Resolved>, String>> {
        let mut readiness = self.readiness.clone();
        let state = readiness
            .wait_for(|state| !matches!(state, Readiness::Verifying))
            .await
            .ok()?;
        match &*state {
            Readiness::Ready(resolved) => Some(Ok(resolved.clone())),
            Readiness::Invalid(why) => Some(Err(why.clone())),
            Readiness::Verifying => None,
        }
    }

    /// `verdict`, but an invalid target is inspected again first (at most every
    /// `REVERIFY_AFTER`): what was wrong with it may have been fixed in Tallyfy since.
    pub async fn verdict_again(&self) -> Option<Result<Arc<Resolved>, String>> {
        let mut readiness = self.readiness.clone();
        if matches!(*readiness.borrow_and_update(), Readiness::Invalid(_)) {
            self.reverify.notify_one();
            readiness.changed().await.ok()?;
        }
        self.verdict().await
    }

    /// Puts `asset` in the field, in place of `replaces` when that is there. `file` stops
    /// counting as on its way once the request is in the actor's inbox.
    pub async fn attach(
        &self,
        asset: Asset,
        replaces: Option<String>,
        file: &OnItsWay,
    ) -> Result<(), FieldError> {
        let (reply, answer) = oneshot::channel();
        self.send(
            Request::Attach {
                asset,
                replaces,
                reply,
            },
            file,
        )
        .await?;
        answer.await.unwrap_or(Err(FieldError::Cancelled))
    }

    /// Deletes an asset remotely and makes sure the field no longer lists it; the actor clears
    /// the job's tombstone from the store once done.
    pub async fn delete(&self, job: DeleteJob, file: &OnItsWay) -> Result<(), FieldError> {
        let (reply, answer) = oneshot::channel();
        self.send(
            Request::Delete {
                job,
                reply: Some(reply),
            },
            file,
        )
        .await?;
        answer.await.unwrap_or(Err(FieldError::Cancelled))
    }

    /// The field's value as it is now (requests that arrive together share one read, and
    /// every file looking at it shares one copy). While the value last read or written is
    /// fresh it answers at once, even while the actor is busy writing the field: new files
    /// go on to their uploads instead of waiting for each write.
    pub async fn read(&self) -> Result<Arc<FieldValue>, FieldError> {
        if let Some(value) = fresh(&self.known) {
            return Ok(value);
        }
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Read { reply })
            .await
            .map_err(|_| FieldError::Cancelled)?;
        answer.await.unwrap_or(Err(FieldError::Cancelled))
    }

    /// Released only after the request is queued, so the actor never sees neither.
    async fn send(&self, request: Request, file: &OnItsWay) -> Result<(), FieldError> {
        let sent = self.requests.send(request).await;
        file.release();
        let _ = PLACE.try_with(Place::give_back);
        sent.map_err(|_| FieldError::Cancelled)
    }

    /// Queues a delete nobody waits for (tombstones left from before a restart).
    pub async fn delete_later(&self, job: DeleteJob) {
        let _ = self
            .requests
            .send(Request::Delete { job, reply: None })
            .await;
    }
}

/// The field's value as read, with what a write needs to send back unchanged.
pub struct Snapshot {
    pub list: RawList,
    checklist: Option<api::Checklist>,
}

impl Snapshot {
    /// The assets parsed, for the commands that look into each.
    pub fn values(&self) -> Vec<Value> {
        self.list.iter().map(|asset| raw::value(asset)).collect()
    }
}

/// A field's value as read once, shared by every file that looks at it while it is fresh: a
/// file asks it for the assets of its own name instead of copying or scanning the whole list,
/// which in a field of thousands of files would make each file cost as much as the field.
pub struct FieldValue {
    /// Every asset's JSON text, one after another: a field of 20,000 files takes a few MiB so,
    /// several times that parsed, and a third more as a block of memory per asset. The actor
    /// holds the value before a write beside the one after it.
    texts: String,
    /// Where each asset's text ends in `texts`; it starts where the one before ends.
    ends: Vec<usize>,
    /// A hash of each asset's stored file name with its position, sorted: a file finds the
    /// assets of its name by a binary search and compares the names in full.
    names: Vec<(u64, u32)>,
    /// Kept by the actor after the value itself is let go, to see what left the field since.
    ids: Arc<HashSet<String>>,
    /// The assets the store's records claimed when a file first asked (see `claimed`).
    claimed: std::sync::Mutex<Option<Arc<HashSet<String>>>>,
}

impl FieldValue {
    pub fn new(list: RawList) -> FieldValue {
        let mut texts = String::with_capacity(list.iter().map(|asset| asset.get().len()).sum());
        let mut ends = Vec::with_capacity(list.len());
        let mut names = Vec::with_capacity(list.len());
        let mut ids = HashSet::with_capacity(list.len());
        for asset in list {
            let (id, name) = raw::asset_keys(&asset);
            if let Some(id) = id {
                ids.insert(id);
            }
            if let (Some(name), Ok(at)) = (name, u32::try_from(ends.len())) {
                names.push((name_hash(&name), at));
            }
            texts.push_str(asset.get());
            ends.push(texts.len());
        }
        names.sort_unstable();
        FieldValue {
            texts,
            ends,
            names,
            ids: Arc::new(ids),
            claimed: std::sync::Mutex::new(None),
        }
    }

    /// The assets stored under file name `name`.
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = Value> + 'a {
        let hash = name_hash(name);
        let first = self.names.partition_point(|(other, _)| *other < hash);
        self.names[first..]
            .iter()
            .take_while(move |(other, _)| *other == hash)
            .filter_map(|(_, at)| {
                let at = *at as usize;
                let start = at.checked_sub(1).map_or(0, |before| self.ends[before]);
                serde_json::from_str::<Value>(&self.texts[start..self.ends[at]]).ok()
            })
            .filter(move |asset| crate::store::asset_filename(asset) == Some(name))
    }

    pub fn lists(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    /// The asset ids `records` finds claimed, computed by the first file that asks and shared
    /// with the others while this value is the field's latest: one pass over the records per
    /// read of the field, not one per file. An asset in this value that a file of ours uploaded
    /// was recorded before it could be attached, so before this value was read; one adopted
    /// since is guarded by the caller's own set of adoptions.
    pub fn claimed<E>(
        &self,
        records: impl FnOnce() -> Result<HashSet<String>, E>,
    ) -> Result<Arc<HashSet<String>>, E> {
        let mut claimed = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(claimed) = claimed.as_ref() {
            return Ok(claimed.clone());
        }
        let found = Arc::new(records()?);
        *claimed = Some(found.clone());
        Ok(found)
    }
}

/// Reads a field's value (one GET), as the actor does before each write and as `verify` and
/// `restore` do.
pub async fn read(target: &Target, api: &Client) -> Result<Snapshot, ApiError> {
    match target {
        Target::Task {
            task_id,
            capture_id,
            ..
        }
        | Target::OneOff {
            task_id,
            capture_id,
        } => Ok(Snapshot {
            list: api.task_field(target.run_id(), task_id, capture_id).await?,
            checklist: None,
        }),
        // A launched file's asset lives in its process, in no field this actor writes: only
        // deletes of uploads that could not be launched come here. A route folder's files go to
        // the actors of their processes' tasks; this one only verifies the template.
        Target::Launch(_) | Target::Route(_) => Ok(Snapshot {
            list: Vec::new(),
            checklist: None,
        }),
        Target::Kickoff {
            checklist_id,
            field_id,
        } => {
            let checklist = api.get_checklist(checklist_id).await?;
            let list = checklist
                .value_of(field_id)
                .map(raw::items)
                .unwrap_or_default();
            Ok(Snapshot {
                list,
                checklist: Some(checklist),
            })
        }
    }
}

struct Actor {
    target: Target,
    api: Arc<Client>,
    store: Store,
    removals: Removals,
    known: Arc<Known>,
    /// The asset ids of the field as last read or written.
    seen: std::sync::Mutex<Option<Arc<HashSet<String>>>>,
    attach_delay: Duration,
    expected: Arc<Expected>,
    reverify: Arc<Notify>,
    cancel: CancellationToken,
}

impl Actor {
    async fn run(self, mut inbox: mpsc::Receiver<Request>, readiness: watch::Sender<Readiness>) {
        if !self.verify(&readiness).await {
            return;
        }
        let mut inspected = Instant::now();
        let mut check = tokio::time::interval_at(
            tokio::time::Instant::now() + self.removals.every,
            self.removals.every,
        );
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stale = self
                .known
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map(|(at, _)| *at + READ_FRESH);
            let first = tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep_until(stale.unwrap_or_else(Instant::now)), if stale.is_some() => {
                    forget_stale(&self.known);
                    continue;
                }
                _ = check.tick() => {
                    let invalid = matches!(&*readiness.borrow(), Readiness::Invalid(_));
                    if invalid {
                        // What was wrong may have been fixed in Tallyfy (a task reopened, a
                        // permission granted): the folder then resumes by itself, for one
                        // read per rescan, and its waiting files go at the next scan.
                        inspected = Instant::now();
                        if !self.verify(&readiness).await {
                            return;
                        }
                    } else if matches!(&*readiness.borrow(), Readiness::Ready(_)) {
                        self.check_removals().await;
                    }
                    continue;
                }
                _ = self.reverify.notified() => {
                    let invalid = matches!(&*readiness.borrow(), Readiness::Invalid(_));
                    if invalid && inspected.elapsed() >= REVERIFY_AFTER {
                        inspected = Instant::now();
                        if !self.verify(&readiness).await {
                            return;
                        }
                    } else {
                        // Whoever asked waits for an answer, even when it is the same.
                        readiness.send_modify(|_| {});
                    }
                    continue;
                }
                request = inbox.recv() => match request {
                    Some(request) => request,
                    None => return,
                },
            };
            let Some(batch) = self.gather(first, &mut inbox).await else {
                return;
            };
            if let Readiness::Invalid(why) = &*readiness.borrow() {
                refuse_all(batch, why);
                continue;
            }
            self.apply(batch).await;
        }
    }

    /// Keeps the names for `status`, written only when they changed (a restart or another
    /// verification of the same target writes nothing). Only for `status`: a store that cannot
    /// take them costs nothing else.
    async fn record_names(&self, names: &Names) {
        let key = names_key(&self.target);
        let known: Option<Names> = self.store.meta(&key).unwrap_or(None);
        if *names == Names::default() || known.as_ref() == Some(names) {
            return;
        }
        if let Err(error) = self.store.set_meta(&key, Some(names)).await {
            debug!(target = %self.target, %error, "cannot record the target's names");
        }
    }

    /// Inspects the target and says what came of it on `readiness`; false when shutting down.
    async fn verify(&self, readiness: &watch::Sender<Readiness>) -> bool {
        let verified = tokio::select! {
            _ = self.cancel.cancelled() => return false,
            verified = inspect(&self.target, &self.api) => verified,
        };
        match verified {
            Ok((resolved, list)) => {
                let names = &resolved.names;
                self.record_names(names).await;
                info!(
                    target = %self.target,
                    template_title = names.template.as_deref(),
                    task_title = names.task.as_deref(),
                    field_label = names.field.as_deref(),
                    "target verified"
                );
                readiness.send_replace(Readiness::Ready(Arc::new(resolved)));
                self.notice_removals(Arc::new(FieldValue::new(list)), true)
                    .await;
            }
            Err(FieldError::Cancelled) => return false,
            Err(error) => {
                let mut why = error.to_string();
                // A wrong organization fails every target alike (403): said once. A 404 is
                // left as it is: a target gone costs the daemon no request more.
                let organization = if forbidden(&why) {
                    tokio::select! {
                        _ = self.cancel.cancelled() => return false,
                        found = crate::diagnose::organization(&self.api) => found,
                    }
                } else {
                    (None, false)
                };
                let again =
                    matches!(&*readiness.borrow(), Readiness::Invalid(before) if *before == why);
                match organization {
                    (Some(problem), first) => {
                        if first {
                            error!(org_id = %self.api.org_id(), base_url = %self.api.base_url(), "{problem}; no folder is synced until the config is fixed");
                        }
                        debug!(target = %self.target, %error, "not synced: {problem}");
                        why = problem;
                    }
                    _ if again => {
                        debug!(target = %self.target, %error, "the target is still wrong")
                    }
                    _ => {
                        error!(target = %self.target, %error, "folders mapped to this target are not synced until the config is fixed")
                    }
                }
                readiness.send_replace(Readiness::Invalid(why));
            }
        }
        true
    }

    /// Gathers a batch from its first request: while more files for this field are on their
    /// way, waits for them, but never `attach_delay` without one arriving, nor past
    /// `MAX_BATCH_WAIT` delays or `MAX_BATCH` requests. Reads the value last seen can answer
    /// are answered at once and join no batch. `None` when shutting down.
    async fn gather(
        &self,
        first: Request,
        inbox: &mut mpsc::Receiver<Request>,
    ) -> Option<Vec<Request>> {
        let mut batch = Vec::new();
        self.take(first, &mut batch);
        let latest = Instant::now() + self.attach_delay * MAX_BATCH_WAIT;
        let mut deadline = (Instant::now() + self.attach_delay).min(latest);
        loop {
            while batch.len() < MAX_BATCH {
                match inbox.try_recv() {
                    Ok(request) => {
                        if self.take(request, &mut batch) {
                            deadline = (Instant::now() + self.attach_delay).min(latest);
                        }
                    }
                    Err(_) => break,
                }
            }
            let fewer = self.expected.fewer.notified();
            tokio::pin!(fewer);
            fewer.as_mut().enable();
            // A read is what a file on its way waits for (is a copy already there?): waiting for
            // that file would wait for `attach_delay` for nothing.
            let reading = batch
                .iter()
                .any(|request| matches!(request, Request::Read { .. }));
            if batch.is_empty()
                || reading
                || batch.len() >= MAX_BATCH
                || self.expected.files.load(Ordering::Acquire) == 0
            {
                return Some(batch);
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return None,
                _ = tokio::time::sleep_until(deadline) => return Some(batch),
                request = inbox.recv() => match request {
                    Some(request) => {
                        if self.take(request, &mut batch) {
                            deadline = (Instant::now() + self.attach_delay).min(latest);
                        }
                    }
                    None => return Some(batch),
                },
                _ = &mut fewer => {}
            }
        }
    }

    /// Adds `request` to the batch, unless it is a read that the field's value as last read or
    /// written answers, while that is under `READ_FRESH` old; true when it was added.
    fn take(&self, request: Request, batch: &mut Vec<Request>) -> bool {
        if let Request::Read { reply } = request {
            match fresh(&self.known) {
                Some(value) => {
                    let _ = reply.send(Ok(value));
                    return false;
                }
                None => batch.push(Request::Read { reply }),
            }
        } else {
            batch.push(request);
        }
        true
    }

    /// Deletes first (so a PUT never lists an asset deleted a moment later), then one read and
    /// at most one write of the field for every attach and delete in the batch.
    async fn apply(&self, batch: Vec<Request>) {
        let api = &self.api;
        let mut removed: HashSet<String> = HashSet::new();
        let mut pending = Vec::with_capacity(batch.len());
        for request in batch {
            let Request::Delete { job, reply } = request else {
                pending.push(request);
                continue;
            };
            let Some(id) = job.asset.id() else { continue };
            match api.with_retries(|| api.delete_file(&id)).await {
                Ok(()) => {
                    METRICS.deleted(true);
                    removed.insert(id);
                    pending.push(Request::Delete { job, reply });
                }
                Err(ApiError::Cancelled) => return,
                Err(error) => {
                    METRICS.deleted(false);
                    error!(file = %job.path.display(), asset_id = %id, http_status = error.status(), %error, "could not delete the file from Tallyfy");
                    // A refused delete is not retried forever: the tombstone goes, the error stays in the log.
                    self.finish_delete(&id).await;
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(error.into()));
                    }
                }
            }
        }
        if pending.is_empty() {
            return;
        }
        let attach: Vec<(Asset, Option<String>)> = pending
            .iter()
            .filter_map(|request| match request {
                Request::Attach {
                    asset, replaces, ..
                } => Some((asset.clone(), replaces.clone())),
                Request::Delete { .. } | Request::Read { .. } => None,
            })
            .collect();
        // The field as it is now, indexed once and shared with every read of the batch.
        let outcome = match api.with_retries(|| self.update(&attach, &removed)).await {
            Err(ApiError::Cancelled) => return,
            Err(error) => Err(error.to_string()),
            Ok(list) => Ok(list.map(|list| Arc::new(FieldValue::new(list)))),
        };
        for request in pending {
            match request {
                Request::Attach { asset, reply, .. } => {
                    let id = asset.id().unwrap_or_default();
                    let result = match &outcome {
                        Ok(Some(listed)) if listed.lists(&id) => Ok(()),
                        Ok(Some(_)) => Err(FieldError::NotListed {
                            target: self.target.to_string(),
                            asset: id,
                            why: "the asset cannot reach this field (for a task field, check step_id and checklist_id)".into(),
                        }),
                        Ok(None) => Err(FieldError::Invalid(format!(
                            "the API ignored the field: {} has no such field (the API drops unknown fields silently)",
                            self.target
                        ))),
                        Err(error) => Err(FieldError::Refused(error.clone())),
                    };
                    let _ = reply.send(result);
                }
                Request::Delete { job, reply } => {
                    let id = job.asset.id().unwrap_or_default();
                    let result = match &outcome {
                        Ok(Some(listed)) if listed.lists(&id) => {
                            warn!(file = %job.path.display(), asset_id = %id, "the field still lists a deleted asset");
                            Ok(())
                        }
                        Ok(_) => Ok(()),
                        Err(error) => Err(FieldError::Refused(error.clone())),
                    };
                    if result.is_ok() {
                        let what = match job.kind {
                            DeleteKind::Removed => "deleted from Tallyfy",
                            DeleteKind::Replaced => "earlier version deleted from Tallyfy",
                            DeleteKind::Orphan => {
                                "orphan upload removed from Tallyfy (it was never attached to the field)"
                            }
                        };
                        info!(folder = %job.folder.display(), file = %job.path.display(), asset_id = %id, "{what}");
                    }
                    self.finish_delete(&id).await;
                    if let Some(reply) = reply {
                        let _ = reply.send(result);
                    }
                }
                Request::Read { reply } => {
                    let result = match &outcome {
                        Ok(Some(value)) => Ok(value.clone()),
                        Err(error) => Err(FieldError::Refused(error.clone())),
                        Ok(None) => Err(FieldError::Invalid(format!(
                            "the API did not show the field of {}",
                            self.target
                        ))),
                    };
                    let _ = reply.send(result);
                }
            }
        }
        if let Ok(Some(value)) = outcome {
            self.notice_removals(value, false).await;
        }
    }

    /// Reads the field only to compare it with the store.
    async fn check_removals(&self) {
        let api = &self.api;
        match api.with_retries(|| self.read()).await {
            Ok(snapshot) => {
                self.notice_removals(Arc::new(FieldValue::new(snapshot.list)), true)
                    .await
            }
            Err(ApiError::Cancelled) => {}
            Err(error) => {
                warn!(target = %self.target, %error, "cannot read the field to look for files removed in Tallyfy; trying again later")
            }
        }
    }

    /// Synced files whose asset `list` no longer holds were removed in Tallyfy: mark them
    /// (`remote_removed: leave`) or put them back (`restore`). Unless `thorough`, the store is
    /// only searched when an asset seen in the field before has left it since, so that a
    /// burst of new files into a big folder costs no pass over its records per batch.
    async fn notice_removals(&self, listed: Arc<FieldValue>, thorough: bool) {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace((Instant::now(), listed.clone()));
        let previous = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(listed.ids.clone());
        let shrank = previous.is_none_or(|previous| previous.iter().any(|id| !listed.lists(id)));
        if !thorough && !shrank {
            return;
        }
        let key = self.target.key();
        let mut restore = Vec::new();
        for (folder, policy) in &self.removals.folders {
            let gone: Vec<_> = self
                .store
                .records_under(folder)
                .filter_map(Result::ok)
                .filter(|(_, record)| {
                    record.target == key
                        && record.folder == *folder
                        && record.state == FileState::Synced
                        && record
                            .attached
                            .as_ref()
                            .and_then(Asset::id)
                            .is_some_and(|id| !listed.lists(&id))
                })
                .collect();
            for (path, mut record) in gone {
                let Some(asset) = record.attached.clone() else {
                    continue;
                };
                let id = asset.id().unwrap_or_default();
                METRICS.remote_removed(*policy == RemoteRemoved::Restore);
                if *policy == RemoteRemoved::Restore {
                    restore.push((path, record, asset));
                    continue;
                }
                record.state = FileState::Removed;
                record.updated = now_unix();
                match self.store.put(&path, &record).await {
                    Ok(()) => {
                        warn!(folder = %folder.display(), file = %path.display(), asset_id = %id, "removed from its field in Tallyfy; leaving it so (remote_removed: leave): not uploaded again unless the local file changes")
                    }
                    Err(error) => {
                        error!(file = %path.display(), %error, "cannot record a file removed in Tallyfy")
                    }
                }
            }
        }
        if !restore.is_empty() {
            self.restore(restore).await;
        }
    }

    /// Attaches removed assets again when they still exist; files whose asset is gone for good
    /// are uploaded again.
    async fn restore(&self, removed: Vec<(PathBuf, crate::store::FileRecord, Asset)>) {
        let api = &self.api;
        let mut attach = Vec::new();
        for (path, mut record, asset) in removed {
            let id = asset.id().unwrap_or_default();
            match api.with_retries(|| api.get_asset(&id)).await {
                Ok(Some(_)) => {
                    info!(folder = %record.folder.display(), file = %path.display(), asset_id = %id, "removed from its field in Tallyfy; attaching it again (remote_removed: restore)");
                    attach.push((asset, None));
                }
                Ok(None) => {
                    info!(folder = %record.folder.display(), file = %path.display(), asset_id = %id, "deleted in Tallyfy; uploading it again (remote_removed: restore)");
                    // Nothing left to replace or delete: the next upload goes in as new.
                    record.attached = None;
                    record.state = FileState::Uploading;
                    record.attempts = 0;
                    record.updated = now_unix();
                    match self.store.put(&path, &record).await {
                        Ok(()) => {
                            let _ = self.removals.recheck.send(path);
                        }
                        Err(error) => {
                            error!(file = %path.display(), %error, "cannot record a file to upload again")
                        }
                    }
                }
                Err(ApiError::Cancelled) => return,
                Err(error) => {
                    warn!(file = %path.display(), asset_id = %id, %error, "cannot ask whether a file removed in Tallyfy still exists; trying again at the next check")
                }
            }
        }
        if attach.is_empty() {
            return;
        }
        let nothing_removed = HashSet::new();
        match api
            .with_retries(|| self.update(&attach, &nothing_removed))
            .await
        {
            Ok(_) | Err(ApiError::Cancelled) => {}
            Err(error) => {
                error!(target = %self.target, %error, "cannot attach the removed files again; trying again at the next check")
            }
        }
    }

    /// Clears a delete's tombstone; while the state directory cannot be written, once it can,
    /// so that no finished delete stays listed as pending until the next start.
    async fn finish_delete(&self, id: &str) {
        loop {
            let error = match self.store.finish_delete(id).await {
                Ok(()) => return,
                Err(error) => error,
            };
            if self.store.unwritable().is_none() {
                error!(asset_id = %id, %error, "cannot record a finished delete");
                return;
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = self.store.writable() => {}
            }
        }
    }

    /// Reads the field, applies the batch, writes it back when anything changed; returns the
    /// field's value as the API now shows it (`None`: the API dropped the field).
    async fn update(
        &self,
        attach: &[(Asset, Option<String>)],
        removed: &HashSet<String>,
    ) -> Result<Option<RawList>, ApiError> {
        // The read is retried on its own: a failed write needs a fresh read, a failed read
        // does not need the write to fail too before it is tried again.
        let Snapshot {
            list: current,
            checklist,
        } = self.api.with_retries(|| self.read()).await?;
        // The merge's indexes (every id, twice) are gone before the write and its answer.
        let (list, changed) = merge(current, attach, removed);
        if !changed {
            debug!(target = %self.target, "field already up to date");
            return Ok(Some(list));
        }
        self.write(checklist, list).await
    }

    async fn read(&self) -> Result<Snapshot, ApiError> {
        read(&self.target, &self.api).await
    }

    async fn write(
        &self,
        checklist: Option<api::Checklist>,
        list: RawList,
    ) -> Result<Option<RawList>, ApiError> {
        match (&self.target, checklist) {
            (
                Target::Task {
                    task_id,
                    capture_id,
                    ..
                }
                | Target::OneOff {
                    task_id,
                    capture_id,
                },
                _,
            ) => {
                self.api
                    .put_task_field(self.target.run_id(), task_id, capture_id, list)
                    .await
            }
            (
                Target::Kickoff {
                    checklist_id,
                    field_id,
                },
                Some(checklist),
            ) => {
                // The whole prerun array goes back, or the API removes the kick-off fields left out.
                let mut checklist = checklist;
                if let Some(index) = checklist.position(field_id) {
                    let value = raw::array(&list).ok_or_else(|| ApiError::Decode {
                        endpoint: api::Endpoint::PutChecklist,
                        detail: "the field's value could not be written as JSON".into(),
                    })?;
                    checklist.values[index] = Some(value);
                }
                drop(list);
                let answer = self.api.put_checklist(checklist_id, &checklist).await?;
                Ok(answer.value_of(field_id).map(raw::items))
            }
            (Target::Kickoff { .. } | Target::Launch(_) | Target::Route(_), _) => Ok(None),
        }
    }
}

/// Answers every request of a batch for a target that failed verification.
fn refuse_all(batch: Vec<Request>, why: &str) {
    for request in batch {
        let why = || FieldError::Invalid(why.to_string());
        match request {
            Request::Attach { reply, .. } => {
                let _ = reply.send(Err(why()));
            }
            Request::Delete { reply, .. } => {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(why()));
                }
            }
            Request::Read { reply } => {
                let _ = reply.send(Err(why()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_field_value_finds_assets_by_stored_name_and_reads_the_claims_once() {
        let value = FieldValue::new(vec![
            raw::of(&json!({"id": "a1", "filename": "scan.pdf"})),
            raw::of(&json!({"id": "a2", "filename": "other.pdf"})),
            raw::of(&json!({"id": "a3", "filename": "scan.pdf"})),
        ]);
        let named: Vec<String> = value
            .named("scan.pdf")
            .filter_map(|asset| Some(asset["id"].as_str()?.to_string()))
            .collect();
        assert_eq!(named, ["a1", "a3"]);
        assert_eq!(value.named("missing.pdf").count(), 0);
        assert!(value.lists("a2") && !value.lists("a4"));

        let reads = AtomicUsize::new(0);
        let records = || {
            reads.fetch_add(1, Ordering::Relaxed);
            Ok::<_, ()>(HashSet::from(["a1".to_string()]))
        };
        assert!(value.claimed(records).unwrap().contains("a1"));
        assert!(value.claimed(records).unwrap().contains("a1"));
        assert_eq!(reads.load(Ordering::Relaxed), 1);
        // A failed read of the records is not kept: the next file reads them again.
        let other = FieldValue::new(Vec::new());
        assert!(other.claimed(|| Err::<HashSet<String>, _>("busy")).is_err());
        assert!(other.claimed(records).is_ok());
        assert_eq!(reads.load(Ordering::Relaxed), 2);
    }
}
