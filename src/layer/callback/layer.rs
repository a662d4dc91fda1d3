//! The [`CallbackLayer`] that builds [`Callbacks`] services.

use super::Callbacks;
use crate::event::dispatch::Dispatcher;

/// A `tower::Layer` that reports events of the wrapped service to a [`Dispatcher`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
/// use livedict::{backend::{MemoryBackend, MemoryConfig}, layer::{CallbackLayer, DispatchConfig, Dispatcher}};
/// let dispatcher = Dispatcher::<u32>::new(DispatchConfig::default())?;
/// let backend = MemoryBackend::new(MemoryConfig::default(), dispatcher.sink())?;
/// let svc = tower::ServiceBuilder::new().layer(CallbackLayer::new(dispatcher)).service(backend);
/// # let _ = svc;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct CallbackLayer<V> {
    dispatcher: Dispatcher<V>,
}

impl<V> CallbackLayer<V> {
    /// A layer reporting to `dispatcher`.
    pub fn new(dispatcher: Dispatcher<V>) -> Self {
        CallbackLayer { dispatcher }
    }
}

impl<S, V> tower::Layer<S> for CallbackLayer<V> {
    type Service = Callbacks<S, V>;

    fn layer(&self, inner: S) -> Self::Service {
        Callbacks::new(inner, self.dispatcher.clone())
    }
}
