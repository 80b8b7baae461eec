//! Audio in: the jitter buffer that turns arriving packets into one frame per tick.

pub mod outbound;
