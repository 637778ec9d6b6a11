//! Endpoint descriptors: a subject tied to the message types that travel on it. Each
//! endpoint is declared once, beside its messages (`inference::EMBED`,
//! `inference::GENERATE`, `health::endpoint(kind)`, ...), and the bus's client and host
//! both take the declaration, so a caller and its handler cannot disagree on the subject
//! or the types.

use std::{fmt, marker::PhantomData};

use crate::{ServiceKind, subjects};

/// Where an endpoint answers: `slough.v1.<service>.<name>`. Both kinds of descriptor
/// deref to it, so `ENDPOINT.subject()` works on either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    service: ServiceKind,
    name: &'static str,
}

impl Address {
    /// The service that answers it.
    pub fn service(&self) -> ServiceKind {
        self.service
    }

    /// The endpoint's name within its service.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Its subject, on which the service's queue group answers.
    pub fn subject(&self) -> String {
        subjects::endpoint(self.service, self.name)
    }

    /// The subject on which only instance `instance_id` answers, for a caller that
    /// chooses the replica (e.g. the least loaded).
    pub fn instance_subject(&self, instance_id: &str) -> String {
        subjects::instance(&self.subject(), instance_id)
    }
}

/// A request/reply endpoint taking `Req` and answering `Resp`.
pub struct Endpoint<Req, Resp> {
    address: Address,
    types: PhantomData<fn(Req) -> Resp>,
}

/// A streamed endpoint: `Req` in, then `Chunk`s and one `End` (see [`crate::stream`]).
pub struct StreamEndpoint<Req, Chunk, End> {
    address: Address,
    types: PhantomData<fn(Req) -> (Chunk, End)>,
}

/// An event `slough.v1.events.<topic>` carrying a `T`, published to every subscriber.
pub struct Event<T> {
    topic: &'static str,
    types: PhantomData<fn() -> T>,
}

impl<Req, Resp> Endpoint<Req, Resp> {
    /// Declares `slough.v1.<service>.<name>`.
    pub const fn new(service: ServiceKind, name: &'static str) -> Self {
        Endpoint {
            address: Address { service, name },
            types: PhantomData,
        }
    }
}

impl<Req, Chunk, End> StreamEndpoint<Req, Chunk, End> {
    /// Declares `slough.v1.<service>.<name>`.
    pub const fn new(service: ServiceKind, name: &'static str) -> Self {
        StreamEndpoint {
            address: Address { service, name },
            types: PhantomData,
        }
    }
}

impl<Req, Resp> std::ops::Deref for Endpoint<Req, Resp> {
    type Target = Address;

    fn deref(&self) -> &Address {
        &self.address
    }
}

impl<Req, Chunk, End> std::ops::Deref for StreamEndpoint<Req, Chunk, End> {
    type Target = Address;

    fn deref(&self) -> &Address {
        &self.address
    }
}

impl<T> Event<T> {
    /// Declares `slough.v1.events.<topic>`.
    pub const fn new(topic: &'static str) -> Self {
        Event {
            topic,
            types: PhantomData,
        }
    }

    /// The topic (`models.added`).
    pub fn topic(&self) -> &'static str {
        self.topic
    }

    /// Its subject.
    pub fn subject(&self) -> String {
        subjects::event(self.topic)
    }
}

impl<Req, Resp> fmt::Debug for Endpoint<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.subject())
    }
}

impl<Req, Chunk, End> fmt::Debug for StreamEndpoint<Req, Chunk, End> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.subject())
    }
}

impl<T> fmt::Debug for Event<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.subject())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_name_their_subjects() {
        const ECHO: Endpoint<String, String> = Endpoint::new(ServiceKind::Rag, "echo");
        const COUNT: StreamEndpoint<u32, u32, u64> =
            StreamEndpoint::new(ServiceKind::Inference, "count");
        const ADDED: Event<String> = Event::new("things.added");
        assert_eq!(ECHO.subject(), "slough.v1.rag.echo");
        assert_eq!(ECHO.service(), ServiceKind::Rag);
        assert_eq!(COUNT.subject(), "slough.v1.inference.count");
        assert_eq!(COUNT.instance_subject("X1"), "slough.v1.inference.count.X1");
        assert_eq!(ADDED.subject(), "slough.v1.events.things.added");
        assert_eq!(format!("{ECHO:?}"), "slough.v1.rag.echo");
    }
}
