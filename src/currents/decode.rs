//! Decodes one Currents object into Custom HTTP events, streaming block by block.

use std::io::Read;
use std::sync::Arc;

use super::container::{ContainerError, ContainerReader};
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
        let event_type: Arc<str> = match CurrentsKey::parse(object).event_type {
            Some(from_key) => Arc::from(from_key),
            None => Arc::from(event_type_from_schema(container.schema())),
        };
        let mapper = EventMapper::new(event_type, container.schema());
        Ok(EventReader {
            object: object.to_string(),
            container,
            mapper,
            events_read: 0,
        })
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
