//! Turn-taking: endpointing, barge-in, backchannels, false-interruption recovery, idle handling.
