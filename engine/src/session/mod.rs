//! A call's session: the media core ([`CallMedia`]) of many calls ticked
//! together by a [`MediaWorker`], which batches VAD across them and hands
//! end-of-turn scoring to a model thread ([`EotPool`]), and links each call
//! to its conversation (agent loop and recognizer).

mod eot_pool;
mod media;
mod worker;

pub use eot_pool::{EotAnswer, EotPool, EotRequest};
pub use media::{
    CallMedia, CallMediaConfig, CallMediaError, MediaEvent, TURN_AUDIO_MAX, VAD_WINDOW,
};
pub use worker::{CallKey, ConversationLink, MediaWorker, PacketSink, WorkerError, WorkerEvent};
