//! Decodes one Currents object into Custom HTTP events, streaming block by block.
//!
//! A resume starts at a block ([`EventReader::open_at`]: the header and a ranged read from the
//! block's offset) and moves on to the first event not yet ended ([`EventReader::skip_to`]);
//! see [`super::container`] for what each checks.

use std::io::Read;
use std::sync::Arc;

use super::container::{BlockStart, ContainerError, ContainerReader};
use super::event::{CustomHttpEvent, EventMapper, MappingWarning, event_type_from_schema};
use super::key::CurrentsKey;

/// A Currents object that could not be read (further), named by its key or path.
#[derive(Debug, thiserror::Error)]
#[error("{object}: {source}")]
pub struct DecodeError {
    pub object: String,
    #[source]
    pub source: ContainerError,
}

/// Reads the events of one object.
pub struct EventReader<R> {
    object: String,
    container: ContainerReader<R>,
    mapper: EventMapper,
    events_read: u64,
}

impl<R: Read> EventReader<R> {
    /// Opens an object. `object` is its key or path: its `event_type=` segment names the event
    /// type; without one, the writer schema's name does.
    pub fn open(input: R, object: &str) -> Result<Self, DecodeError> {
        let container = ContainerReader::open(input).map_err(|source| DecodeError {
            object: object.to_string(),
            source,
        })?;
        Ok(Self::with_container(container, object))
    }

    /// Opens an object at a block: its header from `header` (the object's first bytes; more are
    /// ignored), its blocks from `body`, whose first byte is the object's byte `at.offset`
    /// (a ranged read). See [`ContainerReader::open_at`].
    pub fn open_at<H: Read>(
        header: H,
        body: R,
        at: BlockStart,
        object: &str,
    ) -> Result<Self, DecodeError> {
        let container =
            ContainerReader::open_at(header, body, at).map_err(|source| DecodeError {
                object: object.to_string(),
                source,
            })?;
        Ok(Self::with_container(container, object))
    }

    fn with_container(container: ContainerReader<R>, object: &str) -> Self {
        let event_type: Arc<str> = match CurrentsKey::parse(object).event_type {
            Some(from_key) => Arc::from(from_key),
            None => Arc::from(event_type_from_schema(container.schema())),
        };
        let mapper = EventMapper::new(event_type, container.schema());
        EventReader {
            object: object.to_string(),
            container,
            mapper,
            events_read: 0,
        }
    }

    /// Moves on to event `record` (an index in the object) without mapping the events passed
    /// over; returns how many were. See [`ContainerReader::skip_to`].
    pub fn skip_to(&mut self, record: u64) -> Result<u64, DecodeError> {
        self.container
            .skip_to(record)
            .map_err(|source| DecodeError {
                object: self.object.clone(),
                source,
            })
    }

    /// The start of the block the last event came from: where a resume opens the object.
    pub fn block_start(&self) -> BlockStart {
        self.container.block_start()
    }

    /// Bytes of the object's header: a resume reads `0..header_len` for it.
    pub fn header_len(&self) -> u64 {
        self.container.header_len()
    }

    /// The index in the object of the event `next_event` returns next.
    pub fn next_index(&self) -> u64 {
        self.container.next_index()
    }

    pub fn object(&self) -> &str {
        &self.object
    }

    pub fn event_type(&self) -> &Arc<str> {
        self.mapper.event_type()
    }

    pub fn codec_name(&self) -> &'static str {
        self.container.codec_name()
    }

    /// Events returned by `next_event` (not those `skip_to` passed over).
    pub fn events_read(&self) -> u64 {
        self.events_read
    }

    /// The next event and the warnings about it (one per odd value of its JSON `properties`),
    /// or `None` at the end of the object.
    pub fn next_event(
        &mut self,
    ) -> Result<Option<(CustomHttpEvent, Vec<MappingWarning>)>, DecodeError> {
        match self.container.next_record() {
            Ok(Some(record)) => {
                self.events_read += 1;
                Ok(Some(self.mapper.map(record)))
            }
            Ok(None) => Ok(None),
            Err(source) => Err(DecodeError {
                object: self.object.clone(),
                source,
            }),
        }
    }
}
