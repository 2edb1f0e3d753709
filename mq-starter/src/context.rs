//! What a running application shares with its handlers: registered state and the template.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

use mq_core::MessageView;

use crate::template::MqTemplate;

/// Application state by type, as registered with
/// [`MqApplication::with_state`](crate::MqApplication::with_state).
#[derive(Default, Clone)]
pub struct States {
    map: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl States {
    /// Adds (or replaces) a state value.
    pub fn insert<T: Clone + Send + Sync + 'static>(&mut self, value: T) {
        self.map.insert(TypeId::of::<T>(), Arc::new(value));
    }

    /// The state of type `T`, if registered.
    pub fn get<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.map
            .get(&TypeId::of::<T>())
            .and_then(|v| v.downcast_ref::<T>())
            .cloned()
    }

    /// Whether a state of type `T` is registered.
    pub fn contains<T: 'static>(&self) -> bool {
        self.map.contains_key(&TypeId::of::<T>())
    }
}

impl std::fmt::Debug for States {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("States")
            .field("count", &self.map.len())
            .finish()
    }
}

/// Shared by every handler of an application.
#[derive(Debug, Clone)]
pub struct AppContext {
    /// Registered state.
    pub states: States,
    /// The template sender.
    pub template: MqTemplate,
}

/// One delivery (or one batch, for batch listeners) as handlers' extractors see it.
#[derive(Debug, Clone)]
pub struct DeliveryContext {
    /// The messages: one, or the batch.
    pub messages: Vec<MessageView>,
    /// The application.
    pub app: Arc<AppContext>,
}
