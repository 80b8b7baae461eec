//! Stream registration shared by the batched VAD back ends: fixed slots,
//! handles that go stale when a slot is released, and the list of streams
//! with a window waiting for the next run. Everything is allocated when the
//! batch is built.

/// A registered stream in a VAD batch. Handles are cheap to copy; one that
/// outlived [`release`](super::SileroBatch::release) is refused, even if
/// its slot was given to a new stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamHandle {
    slot: u32,
    generation: u32,
}

impl StreamHandle {
    /// The slot index (stable while the stream is registered).
    pub fn slot(self) -> usize {
        self.slot as usize
    }
}

/// What a VAD batch refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// Every slot is taken.
    #[error("the VAD batch is full ({capacity} streams)")]
    Full {
        /// How many streams the batch holds.
        capacity: usize,
    },
    /// The handle was released (or never belonged to this batch).
    #[error("unknown or released VAD stream handle")]
    UnknownStream,
    /// A window must be exactly 512 samples (32 ms at 16 kHz).
    #[error("a VAD window is {expected} samples at 16 kHz, got {got}")]
    WindowLength {
        /// The required length.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// The stream already has a window waiting for the next run.
    #[error("the stream already submitted a window for this run")]
    AlreadyPending,
}

#[derive(Debug, Clone)]
pub(crate) struct Streams {
    generation: Vec<u32>,
    in_use: Vec<bool>,
    is_pending: Vec<bool>,
    free: Vec<u32>,
    /// Slots with a submitted window, in submission order.
    pending: Vec<u32>,
}

impl Streams {
    pub(crate) fn new(capacity: usize) -> Self {
        Streams {
            generation: vec![0; capacity],
            in_use: vec![false; capacity],
            is_pending: vec![false; capacity],
            // Reversed so slot 0 is handed out first.
            free: (0..capacity as u32).rev().collect(),
            pending: Vec::with_capacity(capacity),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.in_use.len()
    }

    pub(crate) fn register(&mut self) -> Result<StreamHandle, StreamError> {
        let slot = self.free.pop().ok_or(StreamError::Full {
            capacity: self.capacity(),
        })?;
        self.in_use[slot as usize] = true;
        Ok(StreamHandle {
            slot,
            generation: self.generation[slot as usize],
        })
    }

    pub(crate) fn check(&self, handle: StreamHandle) -> Result<usize, StreamError> {
        let slot = handle.slot as usize;
        match (self.in_use.get(slot), self.generation.get(slot)) {
            (Some(true), Some(&generation)) if generation == handle.generation => Ok(slot),
            _ => Err(StreamError::UnknownStream),
        }
    }

    pub(crate) fn release(&mut self, handle: StreamHandle) -> Result<usize, StreamError> {
        let slot = self.check(handle)?;
        self.in_use[slot] = false;
        self.generation[slot] = self.generation[slot].wrapping_add(1);
        if self.is_pending[slot] {
            self.is_pending[slot] = false;
            self.pending.retain(|&pending| pending as usize != slot);
        }
        self.free.push(slot as u32);
        Ok(slot)
    }

    pub(crate) fn mark_pending(&mut self, slot: usize) -> Result<(), StreamError> {
        if self.is_pending[slot] {
            return Err(StreamError::AlreadyPending);
        }
        self.is_pending[slot] = true;
        self.pending.push(slot as u32);
        Ok(())
    }

    pub(crate) fn pending(&self) -> &[u32] {
        &self.pending
    }

    pub(crate) fn clear_pending(&mut self) {
        for &slot in &self.pending {
            self.is_pending[slot as usize] = false;
        }
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_handles_go_stale_and_slots_are_reused() {
        let mut streams = Streams::new(2);
        let a = streams.register().expect("slot");
        let b = streams.register().expect("slot");
        assert_eq!(streams.register(), Err(StreamError::Full { capacity: 2 }));
        streams.mark_pending(a.slot()).expect("first window");
        assert_eq!(
            streams.mark_pending(a.slot()),
            Err(StreamError::AlreadyPending)
        );
        streams.release(a).expect("registered");
        assert!(streams.pending().is_empty());
        assert_eq!(streams.check(a), Err(StreamError::UnknownStream));
        let c = streams.register().expect("freed slot");
        assert_eq!(c.slot(), a.slot());
        assert_eq!(streams.check(a), Err(StreamError::UnknownStream));
        assert_eq!(streams.check(c), Ok(c.slot()));
        assert_eq!(streams.check(b), Ok(b.slot()));
    }
}
