//! A submitter handle's bracket around each submit: the in-progress count that lets a
//! shutdown close intake without a lock (see the module docs of [`intake`](super)).

use std::sync::atomic::Ordering;

use super::{Handle, Intake, Liveness};

impl<Req, Resp> Handle<Req, Resp> {
    /// Runs `f` with the intake while it is open (`None` once a shutdown started), counting
    /// this submitter handle as busy meanwhile (see the module docs).
    pub(crate) fn submitting<T>(&self, f: impl FnOnce(Option<&Intake<Req, Resp>>) -> T) -> T {
        let Some(live) = &self.live else {
            // The orchestrator's own handle: the caller checks it is running.
            return f(Some(&self.shared.intake));
        };
        live.fetch_add(1, Ordering::SeqCst);
        // Decremented on every way out, also when user code in the submit (a `by_key`
        // function) panics: a count left up would keep a shutdown waiting forever.
        let _done = Done(live);
        let open = !self.shared.closing.load(Ordering::SeqCst);
        f(open.then_some(&self.shared.intake))
    }
}

/// Ends one submit of a [`Liveness`] count when dropped (`Release`: see the module docs).
struct Done<'a>(&'a Liveness);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}
