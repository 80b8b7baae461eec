//! The per-agent thresholds of the turn-taking machine, with the reasons for
//! their defaults.

use std::time::Duration;

use thiserror::Error;

/// The thresholds of the turn-taking machine. Every endpointing wait is
/// measured from the end of the user's voice (`VadEvent::SpeechStopped::at`),
/// so the VAD gate's own silence (~200 ms) counts toward it.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnConfig {
    /// Ask the semantic end-of-turn model (Smart Turn) after each VAD stop.
    /// Without it, transcript cues alone decide. Default: true.
    pub use_end_of_turn_model: bool,
    /// The model's probability at or above which it says "complete".
    /// Default: 0.5 (Smart Turn's own threshold).
    pub model_complete_threshold: f32,
    /// If the model has not answered this long after the request, fall back
    /// to transcript cues (as if there were no model). `None`: wait for it up
    /// to the hard maximum. Default: 800 ms (the model takes 40-130 ms).
    pub model_answer_timeout: Option<Duration>,
    /// The hard maximum wait after the end of the user's voice: the turn
    /// ends then whatever the model and the cues say. Default: 2.5 s
    /// (LiveKit's streaming-detector maximum; Pipecat waits 3 s).
    pub max_end_of_turn_wait: Duration,
    /// Without a model (or when it is late): the wait when the words sound
    /// finished. Default: 400 ms.
    pub cue_complete_wait: Duration,
    /// Without a model (or when it is late): the wait when the words say
    /// nothing either way. Default: 1.2 s.
    pub cue_neutral_wait: Duration,
    /// The least wait when the model says complete but the transcript ends in
    /// a punctuated function word ("... is that."): longer than the usual
    /// mid-sentence pause (0.5-0.9 s), shorter than the maximum because such
    /// sentences are sometimes finished. Default: 1.0 s.
    pub punctuated_function_word_hold: Duration,
    /// The wait when the model says incomplete but the utterance is a short
    /// answer or a question ("Yeah." scored p=0.13 in livekit/agents#6415).
    /// Default: 1.0 s.
    pub model_disagreement_wait: Duration,
    /// Emit `SpeculativeTurn` (start the LLM early) once the transcript is
    /// stable after the VAD stop and does not sound unfinished. Default: true.
    pub preemptive_generation: bool,
    /// How long the transcript must stay unchanged before a speculation.
    /// Default: 100 ms.
    pub preemptive_stable_for: Duration,
    /// Continuous user speech needed before a barge-in can interrupt the
    /// agent (with non-backchannel words). Default: 200 ms.
    pub barge_in_min_speech: Duration,
    /// Continuous user speech after which a barge-in interrupts on audio
    /// alone, when no words have been transcribed yet. The trade-off: lower
    /// stops the agent sooner when the recognizer is slow, but a cough or a
    /// slowly transcribed "okay" (~400 ms of voice) would stop it too; most
    /// coughs and backchannels are over, or transcribed, by 500 ms, and a
    /// noise that did interrupt is undone by `false_interruption_timeout`.
    /// Default: 500 ms.
    pub barge_in_audio_only_after: Duration,
    /// After speech over the agent stopped without interrupting, words that
    /// arrive this late still count (the recognizer lags the VAD).
    /// Default: 800 ms.
    pub barge_in_late_transcript_window: Duration,
    /// Phrases that, making up the whole utterance, never interrupt the
    /// agent. Case-insensitive; hyphens separate words ("uh-huh" matches
    /// "uh huh").
    pub backchannel_phrases: Vec<String>,
    /// After an interruption whose speech brought no words (or only a
    /// backchannel), the silence after which the agent resumes.
    /// Default: 1.5 s (LiveKit: 2.0 s).
    pub false_interruption_timeout: Duration,
    /// User silence after the agent finished speaking before `IdlePrompt`.
    /// `None`: never. Default: 8 s.
    pub idle_prompt_after: Option<Duration>,
    /// User silence after the agent finished speaking (counting the prompt)
    /// before `Hangup(IdleTimeout)`. `None`: never. Default: 20 s.
    pub idle_hangup_after: Option<Duration>,
    /// The longest call. `None`: unlimited. Default: 30 min.
    pub max_call_duration: Option<Duration>,
    /// While a tool runs, ignore the user's speech: it neither interrupts
    /// nor starts a turn. Default: false.
    pub mute_user_during_tools: bool,
}

/// The default backchannels: acknowledgements a listener says without
/// taking the turn.
pub const DEFAULT_BACKCHANNELS: &[&str] = &[
    "uh-huh",
    "uh huh",
    "uhhuh",
    "mm-hmm",
    "mhm",
    "mmhmm",
    "mm",
    "hmm",
    "okay",
    "ok",
    "right",
    "yeah",
    "yes",
    "yep",
    "yup",
    "sure",
    "got it",
    "i see",
    "alright",
    "all right",
];

impl Default for TurnConfig {
    fn default() -> Self {
        TurnConfig {
            use_end_of_turn_model: true,
            model_complete_threshold: 0.5,
            model_answer_timeout: Some(Duration::from_millis(800)),
            max_end_of_turn_wait: Duration::from_millis(2500),
            cue_complete_wait: Duration::from_millis(400),
            cue_neutral_wait: Duration::from_millis(1200),
            punctuated_function_word_hold: Duration::from_millis(1000),
            model_disagreement_wait: Duration::from_millis(1000),
            preemptive_generation: true,
            preemptive_stable_for: Duration::from_millis(100),
            barge_in_min_speech: Duration::from_millis(200),
            barge_in_audio_only_after: Duration::from_millis(500),
            barge_in_late_transcript_window: Duration::from_millis(800),
            backchannel_phrases: DEFAULT_BACKCHANNELS
                .iter()
                .map(|phrase| (*phrase).to_owned())
                .collect(),
            false_interruption_timeout: Duration::from_millis(1500),
            idle_prompt_after: Some(Duration::from_secs(8)),
            idle_hangup_after: Some(Duration::from_secs(20)),
            max_call_duration: Some(Duration::from_secs(30 * 60)),
            mute_user_during_tools: false,
        }
    }
}

/// A `TurnConfig` that cannot work.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum TurnConfigError {
    /// The model threshold is not a probability.
    #[error("model_complete_threshold must be within 0..=1, got {0}")]
    Threshold(f32),
    /// The hard maximum wait is zero.
    #[error("max_end_of_turn_wait must be positive")]
    ZeroMaxWait,
    /// The audio-only barge-in would fire before the minimum speech.
    #[error(
        "barge_in_audio_only_after ({audio_only:?}) is shorter than barge_in_min_speech ({min_speech:?})"
    )]
    AudioOnlyBeforeMinSpeech {
        /// `barge_in_audio_only_after`.
        audio_only: Duration,
        /// `barge_in_min_speech`.
        min_speech: Duration,
    },
    /// The idle hang-up would come before the idle prompt.
    #[error("idle_hangup_after ({hangup:?}) must be later than idle_prompt_after ({prompt:?})")]
    HangupBeforePrompt {
        /// `idle_prompt_after`.
        prompt: Duration,
        /// `idle_hangup_after`.
        hangup: Duration,
    },
    /// A backchannel phrase has no words.
    #[error("backchannel phrase {0:?} has no words")]
    EmptyBackchannel(String),
}

impl TurnConfig {
    /// Check that the thresholds make sense together.
    pub fn validate(&self) -> Result<(), TurnConfigError> {
        let threshold = self.model_complete_threshold;
        if !(0.0..=1.0).contains(&threshold) {
            return Err(TurnConfigError::Threshold(threshold));
        }
        if self.max_end_of_turn_wait.is_zero() {
            return Err(TurnConfigError::ZeroMaxWait);
        }
        if self.barge_in_audio_only_after < self.barge_in_min_speech {
            return Err(TurnConfigError::AudioOnlyBeforeMinSpeech {
                audio_only: self.barge_in_audio_only_after,
                min_speech: self.barge_in_min_speech,
            });
        }
        if let (Some(prompt), Some(hangup)) = (self.idle_prompt_after, self.idle_hangup_after)
            && hangup <= prompt
        {
            return Err(TurnConfigError::HangupBeforePrompt { prompt, hangup });
        }
        if let Some(empty) = self
            .backchannel_phrases
            .iter()
            .find(|phrase| !super::cues::has_words(phrase))
        {
            return Err(TurnConfigError::EmptyBackchannel(empty.clone()));
        }
        Ok(())
    }
}
