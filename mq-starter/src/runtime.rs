//! `MqApplication`: builds the broker from configuration, starts every enabled listener, and
//! shuts down gracefully.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mq_core::{
    Backoff, Broker, BrokerError, CheckPolicy, ConsumeFrom, Consumer, ConsumerOptions, DelayPolicy,
    MessageModel, Subscription, TagFilter,
};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use crate::config::{
    parse_durations, parse_mode, parse_model, resolve_placeholders, BrokerKind, BrokerSettings,
    ConfigError, Configuration, ConsumeFromSetting, IdempotencyStoreKind, InstanceName, MqSettings,
};
use crate::context::{AppContext, States};
use crate::idempotency::{IdempotencyError, IdempotencyStore, MemoryStore};
use crate::listener::{Idempotency, ListenerControl, ListenerInfo, ListenerLoop};
use crate::metrics::Metrics;
use crate::registry::{self, ListenerRegistration};
use crate::template::MqTemplate;
use crate::trace::{Tap, Trace, TraceRecorder};
use crate::transaction::Checker;

/// Why an application could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The idempotency store cannot be reached.
    #[error(transparent)]
    Idempotency(#[from] IdempotencyError),
    /// A listener's settings or arguments do not work.
    #[error("listener {name}: {message}")]
    Listener {
        /// The listener (handler function) name.
        name: String,
        /// What is wrong.
        message: String,
    },
}

/// An application of listeners and transaction listeners over one broker.
///
/// ```no_run
/// # async fn run() -> Result<(), mq_starter::StartError> {
/// #[derive(Clone)]
/// struct Shop;
/// mq_starter::MqApplication::from_config()?
///     .with_state(Shop)
///     .run()
///     .await
/// # }
/// ```
pub struct MqApplication {
    config: Configuration,
    settings: MqSettings,
    states: States,
    broker: Option<Arc<dyn Broker>>,
    idempotency: Option<Arc<dyn IdempotencyStore>>,
}

impl MqApplication {
    /// Loads the configuration (see [`Configuration::load`]).
    pub fn from_config() -> Result<Self, StartError> {
        Self::new(Configuration::load()?)
    }

    /// An application over an already loaded configuration.
    pub fn new(config: Configuration) -> Result<Self, StartError> {
        let settings = config.mq()?;
        Ok(MqApplication {
            config,
            settings,
            states: States::default(),
            broker: None,
            idempotency: None,
        })
    }

    /// The configuration, for the application's own sections.
    pub fn config(&self) -> &Configuration {
        &self.config
    }

    /// The `mq:` settings.
    pub fn settings(&self) -> &MqSettings {
        &self.settings
    }

    /// Registers state for `State<T>` extractors and transaction listeners.
    pub fn with_state<T: Clone + Send + Sync + 'static>(mut self, state: T) -> Self {
        self.states.insert(state);
        self
    }

    /// Uses this broker instead of building one from configuration.
    pub fn with_broker(mut self, broker: Arc<dyn Broker>) -> Self {
        self.broker = Some(broker);
        self
    }

    /// Uses this idempotency store instead of building one from configuration.
    pub fn with_idempotency_store(mut self, store: Arc<dyn IdempotencyStore>) -> Self {
        self.idempotency = Some(store);
        self
    }

    /// Opens the broker the configuration names, without starting anything.
    ///
    /// A backend whose cargo feature is not compiled in is
    /// [`ConfigError::FeatureNotCompiled`].
    pub async fn open_broker(settings: &MqSettings) -> Result<Arc<dyn Broker>, StartError> {
        open_broker_of(None, settings).await
    }

    /// Starts the broker, the transaction listeners and every enabled listener.
    pub async fn start(self) -> Result<Running, StartError> {
        check_listener_names(&self.config, &self.settings)?;
        let broker = match self.broker {
            Some(b) => b,
            None => open_broker_of(Some(&self.config), &self.settings).await?,
        };
        let settings = self.settings;
        let metrics = Arc::new(Metrics::default());
        let template = MqTemplate::new(broker.clone(), settings.producer.clone(), metrics.clone());
        let recorder = settings.trace.enabled.then(|| {
            TraceRecorder::start(
                broker.clone(),
                settings.trace.queue_capacity,
                metrics.clone(),
            )
        });
        let app = Arc::new(AppContext {
            states: self.states,
            template: template.clone(),
        });

        for reg in registry::transaction_listeners() {
            let context = format!("transaction listener {}", reg.name);
            let enabled = reg.enabled.get(
                |t| Ok::<_, StartError>(resolve_placeholders(&self.config, t, &context)?),
                |t| {
                    t.parse::<bool>().map_err(|_| StartError::Listener {
                        name: reg.name.into(),
                        message: format!("enabled must be true or false, not {t:?}"),
                    })
                },
            )?;
            if !enabled {
                tracing::info!(
                    name = reg.name,
                    "transaction listener disabled by configuration"
                );
                continue;
            }
            let listener = (reg.make)(&app).map_err(|message| StartError::Listener {
                name: reg.name.into(),
                message,
            })?;
            template.add_transaction_listener(reg.name, listener.clone());
            broker
                .register_checker(reg.name, Arc::new(Checker(listener)))
                .await?;
            tracing::info!(name = reg.name, "transaction listener registered");
        }

        let idempotency = match self.idempotency {
            Some(s) => Some(s),
            None if registry::listeners().any(|l| l.idempotent.is_some()) => {
                Some(open_idempotency(&self.config, &settings).await?)
            }
            None => None,
        };

        let stop = CancellationToken::new();
        // Stops what was started if a later listener fails the start, and later whatever the
        // application is dropped with.
        let stop_on_drop = stop.clone().drop_guard();
        let tasks = TaskTracker::new();
        let mut started = Vec::new();
        let mut controls = Vec::new();
        let start = Start {
            instance: settings
                .instance_name
                .clone()
                .unwrap_or_else(|| InstanceName::default_for(broker.backend())),
            at: SystemTime::now(),
            // On Redis a member killed without leaving stays live for three heartbeats; a
            // broadcasting listener restarted under its name waits that out (and a bit).
            live_wait: if broker.backend() == "redis" {
                settings.broker.redis.heartbeat_interval * 4
            } else {
                Duration::ZERO
            },
        };
        for reg in registry::listeners() {
            let Some(resolved) = resolve(&self.config, &settings, &start, reg)? else {
                tracing::info!(listener = reg.name, "listener disabled by configuration");
                continue;
            };
            let handler = (reg.handler)();
            handler
                .check(&app)
                .map_err(|message| StartError::Listener {
                    name: reg.name.into(),
                    message,
                })?;
            for topic in &resolved.topics {
                let subscription = Subscription {
                    topic: topic.clone(),
                    group: resolved.group.clone(),
                    filter: resolved.filter.clone(),
                    model: resolved.model,
                    mode: resolved.mode,
                };
                let consumer = join(
                    &broker,
                    subscription,
                    resolved.options.clone(),
                    if resolved.model == MessageModel::Broadcasting {
                        start.live_wait
                    } else {
                        Duration::ZERO
                    },
                )
                .await
                .map_err(|e| StartError::Listener {
                    name: reg.name.into(),
                    message: match resolved.model {
                        MessageModel::Broadcasting if already_live(&e) => format!(
                            "{e}: another consumer uses broadcasting instance name {:?}; give each process (mq.instance-name) or listener (mq.listeners.{}.instance-name) a name of its own",
                            resolved.options.instance, reg.name
                        ),
                        _ => e.to_string(),
                    },
                })?;
                tracing::info!(
                    listener = reg.name,
                    module = reg.module,
                    topic = %topic,
                    group = %resolved.group,
                    tags = %resolved.filter,
                    model = ?resolved.model,
                    mode = ?resolved.mode,
                    instance = %resolved.options.instance,
                    consume_from = ?resolved.options.consume_from,
                    concurrency = resolved.concurrency,
                    batch = ?resolved.batch,
                    max_reconsume_times = resolved.options.max_reconsume_times,
                    consume_timeout = ?resolved.options.consume_timeout,
                    idempotent = ?reg.idempotent,
                    "listener started"
                );
                let consumer: Arc<dyn Consumer> = Arc::from(consumer);
                let control = Arc::new(ListenerControl::new(
                    ListenerInfo {
                        name: reg.name.into(),
                        topic: topic.clone(),
                        group: resolved.group.clone(),
                        model: resolved.model,
                        mode: resolved.mode,
                        concurrency: resolved.concurrency,
                        batch: resolved.batch,
                    },
                    consumer.clone(),
                ));
                controls.push(control.clone());
                let lp = Arc::new(ListenerLoop {
                    name: reg.name.into(),
                    group: resolved.group.clone(),
                    topic: topic.clone(),
                    batch: resolved.batch,
                    handler: handler.clone(),
                    app: app.clone(),
                    series: metrics.series(topic, &resolved.group),
                    idempotency: match (reg.idempotent, &idempotency) {
                        (Some(key), Some(store)) => Some(Idempotency {
                            store: store.clone(),
                            key,
                            prefix: settings.idempotency.prefix.clone(),
                            lease: settings.idempotency.lease,
                            retention: settings.idempotency.retention,
                        }),
                        _ => None,
                    },
                    shutdown_timeout: settings.shutdown_timeout,
                    consume_timeout: resolved.options.consume_timeout,
                    trace: recorder
                        .as_ref()
                        .map(|r| Tap::new(r.clone(), &resolved.group, topic)),
                    control,
                });
                started.push((topic.clone(), resolved.group.clone()));
                tasks.spawn(lp.run(consumer, stop.clone()));
            }
        }
        tasks.spawn(track_lag(
            broker.clone(),
            metrics.clone(),
            started,
            stop.clone(),
        ));
        // Nothing else is spawned on it: `wait` returns once every task has finished.
        tasks.close();
        Ok(Running {
            broker,
            template,
            metrics,
            recorder,
            listeners: Arc::new(controls),
            idempotency,
            admin: settings.admin.clone(),
            _stop_on_drop: stop_on_drop,
            stop,
            tasks,
        })
    }

    /// Starts, then runs until SIGINT or SIGTERM, then shuts down gracefully.
    pub async fn run(self) -> Result<(), StartError> {
        let running = self.start().await?;
        shutdown_signal().await;
        tracing::info!("shutdown signal received");
        running.shutdown().await
    }
}

/// Opens the broker of `settings`; `config`, when there is one, names the file of a key.
async fn open_broker_of(
    config: Option<&Configuration>,
    settings: &MqSettings,
) -> Result<Arc<dyn Broker>, StartError> {
    let b = &settings.broker;
    let levels = parse_durations(&b.delay_levels).map_err(|m| ConfigError::BadValue {
        origin: origin_of(config, "mq.broker.delay-levels"),
        key: "mq.broker.delay-levels".into(),
        message: m,
    })?;
    // What every backend takes, built once.
    let mut common = mq_core::BrokerSettings::default();
    common.default_queues = b.queues;
    common.max_message_size = b.max_message_size;
    common.delay = DelayPolicy {
        levels,
        max_delay: b.max_delay,
    };
    common.check = CheckPolicy {
        timeout: b.transaction.timeout,
        interval: b.transaction.check_interval,
        max_checks: b.transaction.check_max,
    };
    match b.kind {
        BrokerKind::Embedded => open_embedded(config, b, common).await,
        BrokerKind::Redis => open_redis(config, settings, common).await,
    }
}

#[cfg(feature = "embedded")]
async fn open_embedded(
    _config: Option<&Configuration>,
    b: &BrokerSettings,
    common: mq_core::BrokerSettings,
) -> Result<Arc<dyn Broker>, StartError> {
    use crate::config::FlushMode;
    use mq_core::embedded::{EmbeddedBroker, EmbeddedConfig, FlushPolicy};

    let mut config = EmbeddedConfig::new(&b.data_dir)
        .flush(match b.flush {
            FlushMode::Async => FlushPolicy::Async {
                interval: b.flush_interval,
            },
            FlushMode::Sync => FlushPolicy::Sync,
        })
        .common(common)
        .segment_size(b.segment_size);
    config.file_reserved_time = b.file_reserved_time;
    Ok(EmbeddedBroker::open(config).await?)
}

#[cfg(not(feature = "embedded"))]
async fn open_embedded(
    config: Option<&Configuration>,
    _b: &BrokerSettings,
    _common: mq_core::BrokerSettings,
) -> Result<Arc<dyn Broker>, StartError> {
    Err(not_compiled(config, "mq.broker.kind", "embedded", "embedded").into())
}

#[cfg(feature = "redis")]
async fn open_redis(
    _config: Option<&Configuration>,
    settings: &MqSettings,
    common: mq_core::BrokerSettings,
) -> Result<Arc<dyn Broker>, StartError> {
    use mq_core::redis::{RedisBroker, RedisConfig};

    let b = &settings.broker;
    let r = &b.redis;
    let config = RedisConfig::new(&r.url)
        .prefix(&r.prefix)
        .common(common)
        .command_timeout(settings.producer.send_timeout)
        .poll_interval(r.poll_interval)
        .heartbeat_interval(r.heartbeat_interval)
        .broadcast_reserve(r.broadcast_reserve)
        .trim_interval(r.trim_interval);
    Ok(RedisBroker::connect(config).await?)
}

#[cfg(not(feature = "redis"))]
async fn open_redis(
    config: Option<&Configuration>,
    _settings: &MqSettings,
    _common: mq_core::BrokerSettings,
) -> Result<Arc<dyn Broker>, StartError> {
    Err(not_compiled(config, "mq.broker.kind", "redis", "redis").into())
}

#[cfg_attr(feature = "redis", allow(unused_variables))]
async fn open_idempotency(
    config: &Configuration,
    settings: &MqSettings,
) -> Result<Arc<dyn IdempotencyStore>, StartError> {
    Ok(match settings.idempotency.store {
        IdempotencyStoreKind::Memory => Arc::new(MemoryStore::new(settings.idempotency.capacity)),
        #[cfg(feature = "redis")]
        IdempotencyStoreKind::Redis => Arc::new(
            crate::idempotency::RedisStore::connect(&settings.idempotency.redis_url).await?,
        ),
        #[cfg(not(feature = "redis"))]
        IdempotencyStoreKind::Redis => {
            return Err(not_compiled(Some(config), "mq.idempotency.store", "redis", "redis").into())
        }
    })
}

/// The file (or `environment`) that set `key`, or `configuration` without one.
fn origin_of(config: Option<&Configuration>, key: &str) -> String {
    config.map_or_else(|| "configuration".into(), |c| c.origin_of(key))
}

/// `key: value` needs cargo feature `feature`, which this build lacks.
#[cfg_attr(all(feature = "embedded", feature = "redis"), allow(dead_code))]
fn not_compiled(
    config: Option<&Configuration>,
    key: &str,
    value: &str,
    feature: &'static str,
) -> ConfigError {
    ConfigError::FeatureNotCompiled {
        origin: origin_of(config, key),
        key: key.into(),
        value: value.into(),
        feature,
    }
}

/// Every `mq.listeners.<name>` must name a registered listener: a misspelt name would
/// otherwise be ignored in silence, and the listener run with the settings it was meant to
/// change.
fn check_listener_names(config: &Configuration, settings: &MqSettings) -> Result<(), ConfigError> {
    let known: Vec<&str> = registry::listeners().map(|l| l.name).collect();
    match settings
        .listeners
        .keys()
        .find(|name| !known.contains(&name.as_str()))
    {
        None => Ok(()),
        Some(name) => {
            let key = format!("mq.listeners.{name}");
            let mut known: Vec<String> = known.into_iter().map(str::to_owned).collect();
            known.sort();
            known.dedup();
            Err(ConfigError::UnknownListener {
                origin: config.origin_of(&key),
                key,
                known,
            })
        }
    }
}

/// Resolves once SIGINT (Ctrl-C) or, on Unix, SIGTERM arrives.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

async fn track_lag(
    broker: Arc<dyn Broker>,
    metrics: Arc<Metrics>,
    subscriptions: Vec<(String, String)>,
    stop: CancellationToken,
) {
    loop {
        for (topic, group) in &subscriptions {
            if let Ok(Some(lag)) = broker.lag(group, topic).await {
                metrics.series(topic, group).set_lag(lag);
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// What every listener of one start shares.
struct Start {
    /// The application's broadcasting instance name.
    instance: InstanceName,
    /// The start-up time, from which `consume-timestamp: 30m` counts back.
    at: SystemTime,
    /// How long a broadcasting listener waits for a dead predecessor of its name to stop
    /// counting as live.
    live_wait: Duration,
}

/// Whether the broker refused a member because its instance name is live in the group.
fn already_live(e: &BrokerError) -> bool {
    matches!(e, BrokerError::InstanceTaken { .. })
}

/// Subscribes; while the instance name is still live in the group, retries for up to `wait`
/// (a process killed without leaving, restarted under the same name).
async fn join(
    broker: &Arc<dyn Broker>,
    subscription: Subscription,
    options: ConsumerOptions,
    wait: Duration,
) -> Result<Box<dyn Consumer>, BrokerError> {
    let give_up = tokio::time::Instant::now() + wait;
    let pause = (wait / 8).max(Duration::from_millis(50));
    let mut told = false;
    loop {
        match broker
            .subscribe(subscription.clone(), options.clone())
            .await
        {
            Err(e) if already_live(&e) && tokio::time::Instant::now() + pause <= give_up => {
                if !told {
                    tracing::info!(
                        group = %subscription.group,
                        topic = %subscription.topic,
                        instance = %options.instance,
                        "instance name still live in the group (a previous run that did not stop cleanly?); waiting for it to expire"
                    );
                    told = true;
                }
                tokio::time::sleep(pause).await;
            }
            other => return other,
        }
    }
}

/// A listener's attribute values after placeholders and configuration overrides.
struct Resolved {
    topics: Vec<String>,
    group: String,
    filter: TagFilter,
    model: mq_core::MessageModel,
    mode: mq_core::ConsumeMode,
    concurrency: usize,
    batch: Option<usize>,
    options: ConsumerOptions,
}

fn resolve(
    config: &Configuration,
    settings: &MqSettings,
    start: &Start,
    reg: &ListenerRegistration,
) -> Result<Option<Resolved>, StartError> {
    let context = format!("listener {}", reg.name);
    let text = |s: &str| resolve_placeholders(config, s, &context).map_err(StartError::from);
    let bad = |message: String| StartError::Listener {
        name: reg.name.into(),
        message,
    };
    let overrides = settings
        .listeners
        .get(reg.name)
        .cloned()
        .unwrap_or_default();
    let enabled = match overrides.enabled {
        Some(e) => e,
        None => reg.enabled.get(text, |t| {
            t.parse::<bool>()
                .map_err(|_| bad(format!("enabled must be true or false, not {t:?}")))
        })?,
    };
    if !enabled {
        return Ok(None);
    }
    // Literals were checked at compile time; only resolved placeholders are parsed here.
    fn number<T: Copy + std::str::FromStr<Err = std::num::ParseIntError>>(
        v: Option<crate::registry::AttributeValue<T>>,
        text: impl Fn(&'static str) -> Result<String, StartError>,
        bad: impl Fn(String) -> StartError,
        name: &str,
    ) -> Result<Option<T>, StartError> {
        v.map(|v| {
            v.get(&text, |t| {
                t.parse::<T>().map_err(|e| bad(format!("{name}: {e}")))
            })
        })
        .transpose()
    }
    let topics = reg
        .topics
        .iter()
        .map(|t| text(t))
        .collect::<Result<Vec<_>, _>>()?;
    let group = text(reg.group)?;
    let filter = TagFilter::parse(&text(reg.tag)?).map_err(|e| bad(e.to_string()))?;
    let model = match reg.model {
        Some(v) => v.get(text, |t| parse_model(t).map_err(bad))?,
        None => MessageModel::default(),
    };
    let mode = match reg.mode {
        Some(v) => v.get(text, |t| parse_mode(t).map_err(bad))?,
        None => mq_core::ConsumeMode::default(),
    };
    mq_core::subscription::check_model_and_mode(model, mode).map_err(|r| bad(r.into()))?;
    let concurrency = overrides
        .concurrency
        .or(number(reg.concurrency, text, bad, "concurrency")?)
        .unwrap_or(settings.consumer.concurrency)
        .max(1);
    let batch = number(reg.batch, text, bad, "batch")?.map(|n| n.max(1));
    let max_reconsume_times = overrides
        .max_reconsume_times
        .or(number(
            reg.max_reconsume_times,
            text,
            bad,
            "max_reconsume_times",
        )?)
        .unwrap_or(settings.consumer.max_reconsume_times);
    let consume_timeout = match overrides.consume_timeout {
        Some(t) => t,
        None => match reg.consume_timeout {
            Some(v) => v.get(text, |t| {
                humantime::parse_duration(t).map_err(|e| bad(format!("consume_timeout: {e}")))
            })?,
            None => settings.consumer.consume_timeout,
        },
    };
    let steps = parse_durations(&settings.consumer.backoff).map_err(|m| {
        StartError::Config(ConfigError::BadValue {
            origin: "configuration".into(),
            key: "mq.consumer.backoff".into(),
            message: m,
        })
    })?;
    let from = overrides
        .consume_from
        .unwrap_or(settings.consumer.consume_from);
    let timestamp = overrides
        .consume_timestamp
        .or(settings.consumer.consume_timestamp);
    if timestamp.is_some() && from != ConsumeFromSetting::Timestamp {
        tracing::warn!(listener = reg.name, consume_from = ?from, "consume-timestamp is set but consume-from is not timestamp; it is ignored");
    }
    let mut options = ConsumerOptions::new()
        .consume_from(match from {
            ConsumeFromSetting::Last => ConsumeFrom::Last,
            ConsumeFromSetting::First => ConsumeFrom::First,
            ConsumeFromSetting::Timestamp => {
                ConsumeFrom::Timestamp(timestamp.unwrap_or_default().resolve(start.at))
            }
        })
        .consume_timeout(consume_timeout)
        .max_reconsume_times(max_reconsume_times)
        .backoff(Backoff { steps })
        .suspend_current_queue_time(settings.consumer.suspend_current_queue_time)
        .max_in_flight_per_queue(
            (concurrency * batch.unwrap_or(1))
                .max(mq_core::broker::DEFAULT_MAX_IN_FLIGHT_PER_QUEUE),
        );
    // Broadcasting progress is kept per instance name, so it must survive a restart. A
    // clustering member keeps the unique default: its group's progress does not depend on the
    // name, and a restarted process never waits for its dead predecessor to expire.
    if model == MessageModel::Broadcasting {
        let name = overrides.instance_name.as_ref().unwrap_or(&start.instance);
        options = options.instance(name.as_str());
    }
    Ok(Some(Resolved {
        topics,
        group,
        filter,
        model,
        mode,
        concurrency,
        batch,
        options,
    }))
}

/// A started application.
///
/// Dropping it without [`shutdown`](Self::shutdown) asks its listeners to stop (as a
/// [`ShutdownHandle`] does), but nothing waits for them nor flushes the broker.
pub struct Running {
    broker: Arc<dyn Broker>,
    template: MqTemplate,
    metrics: Arc<Metrics>,
    recorder: Option<TraceRecorder>,
    /// Every (listener, topic) started, in start order.
    #[cfg_attr(not(feature = "admin"), allow(dead_code))]
    pub(crate) listeners: Arc<Vec<Arc<ListenerControl>>>,
    /// The idempotency store, when some listener is idempotent.
    #[cfg_attr(not(feature = "admin"), allow(dead_code))]
    pub(crate) idempotency: Option<Arc<dyn IdempotencyStore>>,
    /// `mq.admin`.
    #[cfg_attr(not(feature = "admin"), allow(dead_code))]
    pub(crate) admin: crate::config::AdminSettings,
    stop: CancellationToken,
    /// Cancels `stop` when the application is dropped, so that no listener outlives it.
    _stop_on_drop: DropGuard,
    tasks: TaskTracker,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("backend", &self.broker.backend())
            .finish_non_exhaustive()
    }
}

/// Asks a running application to stop (from axum's graceful shutdown, a test, a signal).
#[derive(Debug, Clone)]
pub struct ShutdownHandle(CancellationToken);

impl ShutdownHandle {
    /// Stops fetching; handlers in flight may finish.
    pub fn shutdown(&self) {
        self.0.cancel();
    }
}

impl Running {
    /// The template, to send messages (and as axum state).
    pub fn template(&self) -> MqTemplate {
        self.template.clone()
    }

    /// The metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The broker (for dead letters and administration).
    pub fn broker(&self) -> Arc<dyn Broker> {
        self.broker.clone()
    }

    /// The recorder of the message trace; `None` with `mq.trace.enabled: false`.
    pub fn trace_recorder(&self) -> Option<TraceRecorder> {
        self.recorder.clone()
    }

    /// What happened to message `id` (see [`mq_core::trace::trace`]).
    pub async fn trace(&self, id: mq_core::MessageId) -> Result<Trace, BrokerError> {
        mq_core::trace::trace(&*self.broker, id).await
    }

    /// A handle that stops fetching.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.stop.clone())
    }

    /// Stops gracefully: no more fetching, handlers in flight finish (up to
    /// `mq.shutdown-timeout`), their trace events are stored, progress is committed and
    /// storage flushed.
    pub async fn shutdown(self) -> Result<(), StartError> {
        self.stop.cancel();
        self.tasks.wait().await;
        if let Some(recorder) = &self.recorder {
            recorder.close().await;
        }
        self.broker.shutdown().await?;
        tracing::info!("mq stopped");
        Ok(())
    }

    /// Waits until a [`ShutdownHandle`] asks to stop, then shuts down.
    pub async fn wait(self) -> Result<(), StartError> {
        self.stop.cancelled().await;
        self.shutdown().await
    }
}
