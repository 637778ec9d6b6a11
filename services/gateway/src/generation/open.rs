//! Opening generations on inference (each on the replica with the most room for its
//! model) and merging their streams into one sequence of [`Event`]s, choice indices
//! offset so that several prompts' choices follow each other. Bus-level: no HTTP here.

use std::pin::Pin;

use futures::{Stream, StreamExt as _, stream};
use slough_bus::{Bus, BusError, StreamItem, StreamReceiver};
use slough_protocol::inference::{
    self, FinishReason, GenerateChunk, GenerateEnd, GenerateRequest, Usage,
};

use crate::replicas::Replicas;

/// What the merged generations report, in order per choice.
#[derive(Debug)]
pub enum Event {
    /// New text of a choice (its index already offset for several prompts).
    Chunk(GenerateChunk),
    /// A choice ended.
    Finished { index: u32, reason: FinishReason },
    /// One upstream generation's token counts (there is one per prompt).
    Usage(Usage),
}

/// The merged events; a failure is the bus's, for the route to answer as it answers
/// any bus error.
pub type Events = Pin<Box<dyn Stream<Item = Result<Event, BusError>>>>;

/// Generations opened on inference: their events, merged, and how many choices they
/// make in all.
pub struct Generation {
    pub events: Events,
    pub choices: u32,
}

/// Opens one generation per request, all before reading any, so that inference can
/// batch them; choice indices of request `i` follow those of the requests before it.
pub async fn open_all(
    bus: &Bus,
    replicas: &Replicas,
    requests: &[GenerateRequest],
) -> Result<Generation, BusError> {
    let opened =
        futures::future::join_all(requests.iter().map(|request| open(bus, replicas, request)))
            .await;
    let mut streams = Vec::with_capacity(opened.len());
    let mut offset = 0;
    for (receiver, request) in opened.into_iter().zip(requests) {
        // Dropping the receivers opened so far cancels them.
        let receiver = receiver?;
        streams.push(events_of(receiver, offset));
        offset += request.n;
    }
    Ok(Generation {
        events: Box::pin(stream::select_all(streams)),
        choices: offset,
    })
}

/// Opens a generation on the replica with the most room for its model, or where the
/// queue group sends it when no replica's load is known. A chosen replica that has gone
/// (nobody answers on its subject) is forgotten and the queue group decides.
async fn open(
    bus: &Bus,
    replicas: &Replicas,
    request: &GenerateRequest,
) -> Result<StreamReceiver<GenerateChunk, GenerateEnd>, BusError> {
    let Some(instance) = replicas.pick(&request.model) else {
        return bus.open(&inference::GENERATE, request).await;
    };
    match bus.open_on(&inference::GENERATE, &instance, request).await {
        Err(BusError::NoResponders { .. }) => {
            replicas.forget(&instance);
            bus.open(&inference::GENERATE, request).await
        }
        opened => opened,
    }
}

fn events_of(receiver: StreamReceiver<GenerateChunk, GenerateEnd>, offset: u32) -> Events {
    let items = stream::unfold(receiver, |mut receiver| async move {
        let item = receiver.next().await?;
        Some((item, receiver))
    });
    Box::pin(items.flat_map(move |item| {
        let events: Vec<Result<Event, BusError>> = match item {
            Ok(StreamItem::Chunk(mut chunk)) => {
                chunk.index += offset;
                vec![Ok(Event::Chunk(chunk))]
            }
            Ok(StreamItem::End(end)) => {
                let mut events: Vec<_> = end
                    .finish_reasons
                    .iter()
                    .zip(0..)
                    .map(|(&reason, index)| {
                        Ok(Event::Finished {
                            index: index + offset,
                            reason,
                        })
                    })
                    .collect();
                events.push(Ok(Event::Usage(end.usage)));
                events
            }
            Err(err) => vec![Err(err)],
        };
        stream::iter(events)
    }))
}
