//! Dispatch: hands calls to the engine and records what the engine reports.

/// Hands a recorded call to whatever runs calls on this node.
pub trait CallLauncher: Send + Sync + 'static {
    /// Starts the queued call `call_id` (returns at once; the call's progress
    /// is recorded as it happens).
    fn launch(&self, call_id: &str);
    /// Cancels the call if this node runs it and it was not answered yet;
    /// false if this node does not know the call.
    fn cancel(&self, call_id: &str) -> bool;
}
