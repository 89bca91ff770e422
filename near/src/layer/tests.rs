//! The layer as a whole: reads, writes and the channel's reports interleaved.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};

use larder_cache_api::layer::InvalidationSink;
use parking_lot::Mutex;

use super::*;

/// A channel driven by the test: it hands its sink out.
#[derive(Debug, Clone, Default)]
struct Manual(Arc<Mutex<Option<InvalidationSink>>>);

impl InvalidationChannel for Manual {
    fn subscribe(&self, sink: InvalidationSink) -> Result<Subscription> {
        *self.0.lock() = Some(sink);
        Ok(Subscription::new(()))
    }
    fn describe(&self) -> String {
        "manual".into()
    }
}

impl Manual {
    fn sink(&self) -> InvalidationSink {
        self.0.lock().clone().unwrap()
    }
}

/// A plain map, enough to stand behind the layer.
#[derive(Debug)]
struct Map {
    caps: Capabilities,
    entries: Mutex<std::collections::HashMap<Key, Entry>>,
    next: AtomicU64,
}

impl Default for Map {
    fn default() -> Self {
        Map {
            caps: Capabilities::full("map"),
            entries: Mutex::default(),
            next: AtomicU64::new(1),
        }
    }
}

#[async_trait]
impl CacheBackend for Map {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }
    async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        Ok(self.entries.lock().get(key).cloned())
    }
    async fn put(&self, key: &Key, value: Bytes, _: Option<Ttl>, _: PutMode) -> Result<Version> {
        let v = Version::from_raw(self.next.fetch_add(1, Ordering::Relaxed));
        self.entries
            .lock()
            .insert(key.clone(), Entry::new(value, v));
        Ok(v)
    }
    async fn delete(&self, key: &Key, _: DeleteMode) -> Result<bool> {
        Ok(self.entries.lock().remove(key).is_some())
    }
    async fn touch(&self, key: &Key, _: Option<Ttl>) -> Result<bool> {
        Ok(self.entries.lock().contains_key(key))
    }
}

type Hook = Box<dyn FnOnce() + Send>;

/// The map, running `hook` once, inside the next `get`, after the read.
struct Hooked {
    inner: DynBackend,
    hook: Mutex<Option<Hook>>,
}

impl fmt::Debug for Hooked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooked").finish_non_exhaustive()
    }
}

#[async_trait]
impl CacheBackend for Hooked {
    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }
    async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        let r = self.inner.get(key).await;
        let hook = self.hook.lock().take();
        if let Some(h) = hook {
            h();
        }
        r
    }
    async fn put(
        &self,
        key: &Key,
        value: Bytes,
        ttl: Option<Ttl>,
        mode: PutMode,
    ) -> Result<Version> {
        self.inner.put(key, value, ttl, mode).await
    }
    async fn delete(&self, key: &Key, mode: DeleteMode) -> Result<bool> {
        self.inner.delete(key, mode).await
    }
    async fn touch(&self, key: &Key, ttl: Option<Ttl>) -> Result<bool> {
        self.inner.touch(key, ttl).await
    }
}

fn setup() -> (Near, Arc<Hooked>, Manual) {
    let hooked = Arc::new(Hooked {
        inner: Arc::new(Map::default()),
        hook: Mutex::new(None),
    });
    let channel = Manual::default();
    let near = Near::builder(hooked.clone())
        .channel(channel.clone())
        .max_staleness(Duration::from_secs(60))
        .build()
        .unwrap();
    let sink = channel.sink();
    sink.up();
    sink.synced(Instant::now());
    (near, hooked, channel)
}

async fn put(b: &dyn CacheBackend, k: &Key, v: &'static [u8]) -> Version {
    b.put(k, Bytes::from_static(v), None, PutMode::Overwrite)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_invalidation_during_a_read_keeps_its_result_out() {
    let (near, hooked, channel) = setup();
    let stats = near.stats();
    let k = Key::new("k").unwrap();
    put(&*hooked.inner, &k, b"old").await;
    let sink = channel.sink();
    // A write elsewhere lands, and its invalidation arrives, while the read is in flight.
    *hooked.hook.lock() = Some(Box::new(move || sink.invalidate(b"k")));
    assert_eq!(near.get(&k).await.unwrap().unwrap().value, &b"old"[..]);
    assert_eq!(near.get(&k).await.unwrap().unwrap().value, &b"old"[..]);
    assert_eq!(
        stats.local_hits(),
        0,
        "a read raced by an invalidation was kept"
    );
    assert_eq!(stats.shared_hits(), 2);
    near.get(&k).await.unwrap();
    assert_eq!(stats.local_hits(), 1, "a clean read is kept");
    assert_eq!(stats.invalidations(), 1);
}

#[tokio::test]
async fn a_channel_down_flushes_and_bypasses_until_up_and_synced() {
    let (near, hooked, channel) = setup();
    let stats = near.stats();
    let sink = channel.sink();
    let k = Key::new("k").unwrap();
    put(&*hooked.inner, &k, b"v1").await;
    near.get(&k).await.unwrap();
    near.get(&k).await.unwrap();
    assert_eq!(stats.local_hits(), 1);
    sink.down();
    assert_eq!(near.channel_state(), ChannelState::Down);
    assert_eq!(stats.flushes(), 1);
    // Changed while the channel was down: never reported.
    put(&*hooked.inner, &k, b"v2").await;
    assert_eq!(near.get(&k).await.unwrap().unwrap().value, &b"v2"[..]);
    sink.up();
    // Up, but not synced since: still bypassed.
    assert_eq!(near.get(&k).await.unwrap().unwrap().value, &b"v2"[..]);
    assert_eq!(stats.bypassed(), 2);
    assert_eq!(stats.local_hits(), 1);
    sink.synced(Instant::now());
    near.get(&k).await.unwrap();
    assert_eq!(near.get(&k).await.unwrap().unwrap().value, &b"v2"[..]);
    assert_eq!(stats.local_hits(), 2);
}

#[tokio::test]
async fn a_sync_older_than_the_bound_bypasses() {
    let hooked: DynBackend = Arc::new(Map::default());
    let channel = Manual::default();
    let near = Near::builder(hooked.clone())
        .channel(channel.clone())
        .max_staleness(Duration::from_millis(20))
        .build()
        .unwrap();
    let stats = near.stats();
    let k = Key::new("k").unwrap();
    put(&*hooked, &k, b"v").await;
    channel.sink().up();
    channel.sink().synced(Instant::now());
    near.get(&k).await.unwrap();
    near.get(&k).await.unwrap();
    assert_eq!(stats.local_hits(), 1);
    tokio::time::sleep(Duration::from_millis(40)).await;
    near.get(&k).await.unwrap();
    assert_eq!(
        stats.local_hits(),
        1,
        "served past the bound without a sync"
    );
    assert_eq!(stats.bypassed(), 1);
}

#[tokio::test]
async fn two_versions_read_in_one_window_keep_neither() {
    let (near, hooked, _channel) = setup();
    let stats = near.stats();
    let k = Key::new("k").unwrap();
    let v1 = put(&*hooked.inner, &k, b"v1").await;
    let tag = near.coherence.tag(&k);
    near.remember(&k, &Entry::new(&b"v1"[..], v1), tag);
    near.remember(
        &k,
        &Entry::new(&b"v2"[..], Version::from_raw(v1.into_raw() ^ 1)),
        tag,
    );
    near.get(&k).await.unwrap();
    assert_eq!(
        stats.local_hits(),
        0,
        "one of two versions of one window was kept"
    );
}

#[tokio::test]
async fn own_writes_drop_the_local_entry_at_once() {
    let (near, _hooked, _channel) = setup();
    let k = Key::new("k").unwrap();
    put(&near, &k, b"v1").await;
    near.get(&k).await.unwrap();
    assert_eq!(near.get(&k).await.unwrap().unwrap().value, &b"v1"[..]);
    put(&near, &k, b"v2").await;
    assert_eq!(near.get(&k).await.unwrap().unwrap().value, &b"v2"[..]);
    near.delete(&k, DeleteMode::Any).await.unwrap();
    assert!(near.get(&k).await.unwrap().is_none());
}
