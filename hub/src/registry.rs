//! Type-erased factories: `type = "..."` → parse settings → build.
#![allow(
    clippy::result_large_err,
    reason = "figment::Error is large; config loading runs once"
)]

use std::collections::BTreeMap;
use std::sync::Arc;

use figment::value::Value;
use hub_core::{
    Backend, BackendConfig, BoxError, Consumer, ConsumerConfig, Producer, ProducerConfig,
    ResourceConfig, Resources,
};

/// A validated consumer's settings, ready to build.
pub(crate) type BuildConsumer =
    Box<dyn FnOnce(&Resources) -> Result<Arc<dyn Consumer>, BoxError> + Send>;
/// A validated producer's settings, ready to build.
pub(crate) type BuildProducer =
    Box<dyn FnOnce(&Resources) -> Result<Arc<dyn Producer>, BoxError> + Send>;
/// A validated resource's settings, ready to build: its type name and the value.
pub(crate) type BuildResource = Box<
    dyn FnOnce(&str) -> Result<(&'static str, Arc<dyn std::any::Any + Send + Sync>), BoxError>
        + Send,
>;
/// A validated backend's settings, ready to build.
pub(crate) type BuildBackend = Box<dyn FnOnce(&str) -> Result<Arc<dyn Backend>, BoxError> + Send>;

type Parse<B> = Box<dyn Fn(Value) -> Result<B, figment::Error> + Send + Sync>;

pub(crate) struct Kind<B> {
    pub description: &'static str,
    /// Backends only: honours the consumer keys `durable` and `queue`.
    pub durable_queues: bool,
    pub parse: Parse<B>,
}

/// Every type the binary knows, by kind.
#[derive(Default)]
pub(crate) struct Registry {
    pub consumers: BTreeMap<&'static str, Kind<BuildConsumer>>,
    pub producers: BTreeMap<&'static str, Kind<BuildProducer>>,
    pub backends: BTreeMap<&'static str, Kind<BuildBackend>>,
    pub resources: BTreeMap<&'static str, Kind<BuildResource>>,
}

impl Registry {
    pub fn consumer<C: ConsumerConfig>(&mut self) {
        self.consumers.insert(
            C::TYPE,
            Kind {
                description: C::DESCRIPTION,
                durable_queues: false,
                parse: Box::new(|v| {
                    let c: C = v.deserialize()?;
                    Ok(Box::new(move |r: &Resources| c.build(r)) as BuildConsumer)
                }),
            },
        );
    }

    pub fn producer<P: ProducerConfig>(&mut self) {
        self.producers.insert(
            P::TYPE,
            Kind {
                description: P::DESCRIPTION,
                durable_queues: false,
                parse: Box::new(|v| {
                    let p: P = v.deserialize()?;
                    Ok(Box::new(move |r: &Resources| p.build(r)) as BuildProducer)
                }),
            },
        );
    }

    pub fn resource<R: ResourceConfig>(&mut self) {
        self.resources.insert(
            R::TYPE,
            Kind {
                description: R::DESCRIPTION,
                durable_queues: false,
                parse: Box::new(|v| {
                    let r: R = v.deserialize()?;
                    Ok(Box::new(move |id: &str| {
                        let value = r.build(id)?;
                        Ok((
                            std::any::type_name::<R::Resource>(),
                            Arc::new(value) as Arc<dyn std::any::Any + Send + Sync>,
                        ))
                    }) as BuildResource)
                }),
            },
        );
    }

    pub fn backend<B: BackendConfig>(&mut self) {
        self.backends.insert(
            B::TYPE,
            Kind {
                description: B::DESCRIPTION,
                durable_queues: B::DURABLE_QUEUES,
                parse: Box::new(|v| {
                    let b: B = v.deserialize()?;
                    Ok(Box::new(move |id: &str| b.build(id)) as BuildBackend)
                }),
            },
        );
    }
}

/// `a, b, c` for error messages.
pub(crate) fn known<B>(map: &BTreeMap<&'static str, Kind<B>>) -> String {
    map.keys().copied().collect::<Vec<_>>().join(", ")
}
