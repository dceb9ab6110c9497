//! Containing user code: panic payloads turned into messages, and user values dropped where
//! a panicking `Drop` cannot take one of our threads down.
//!
//! User code runs in more places than the handler: `init`, the `Drop` of requests, responses,
//! states, captured values and panic payloads. Each place that may run it on one of our
//! threads goes through these functions (rayon's `unwind` module is the model).

use std::any::Any;
use std::fmt::Debug;
use std::panic::{self, AssertUnwindSafe};

/// The message of a panic payload: the text of a `&str` or `String` payload; for the common
/// other payloads (`panic_any` of a number, a `bool`, a `char`, an `io::Error`, a boxed
/// error) their type and value; otherwise that the payload was of a type not known here.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        return (*s).to_owned();
    }
    if let Some(s) = payload.downcast_ref::<String>() {
        return s.clone();
    }
    if let Some(e) = payload.downcast_ref::<std::io::Error>() {
        return format!("panic payload of type std::io::Error: {e}");
    }
    if let Some(e) = payload.downcast_ref::<Box<dyn std::error::Error + Send + Sync>>() {
        return format!("panic payload of type Box<dyn Error + Send + Sync>: {e}");
    }
    macro_rules! typed {
        ($($t:ty),*) => {
            $(if let Some(v) = payload.downcast_ref::<$t>() {
                return describe(v);
            })*
        };
    }
    typed!(
        i8,
        i16,
        i32,
        i64,
        i128,
        isize,
        u8,
        u16,
        u32,
        u64,
        u128,
        usize,
        f32,
        f64,
        bool,
        char,
        ()
    );
    "panic payload of a type other than &str or String (not printable)".to_owned()
}

fn describe<T: Debug>(v: &T) -> String {
    format!(
        "panic payload of type {}: {v:?}",
        std::any::type_name::<T>()
    )
}

/// The panic message, dropping the payload quietly (a payload whose `Drop` panics must not
/// take the calling thread down).
pub(crate) fn message_of(payload: Box<dyn Any + Send>) -> String {
    let message = panic_message(&*payload);
    drop_quietly(payload);
    message
}

/// How many nested panic payloads [`drop_quietly`] drops before it leaks the next one.
const PAYLOAD_DEPTH: usize = 8;

/// Drops a user value (an undelivered response, a request, a state, a panic payload) so that
/// a panic in its `Drop` cannot kill this thread. That panic's payload (usually a message) is
/// dropped the same way, and so on; only a payload chain deeper than [`PAYLOAD_DEPTH`], which
/// takes payloads built to panic on drop, is leaked (one allocation per such drop).
pub(crate) fn drop_quietly<T>(value: T) {
    let Err(mut payload) = panic::catch_unwind(AssertUnwindSafe(|| drop(value))) else {
        return;
    };
    for _ in 0..PAYLOAD_DEPTH {
        match panic::catch_unwind(AssertUnwindSafe(|| drop(payload))) {
            Ok(()) => return,
            Err(again) => payload = again,
        }
    }
    std::mem::forget(payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_panicking_drop_has_its_payload_dropped_not_leaked() {
        static PAYLOADS_DROPPED: AtomicUsize = AtomicUsize::new(0);
        struct Payload;
        impl Drop for Payload {
            fn drop(&mut self) {
                PAYLOADS_DROPPED.fetch_add(1, Ordering::SeqCst);
            }
        }
        struct Hostile;
        impl Drop for Hostile {
            fn drop(&mut self) {
                std::panic::panic_any(Payload);
            }
        }
        drop_quietly(Hostile);
        assert_eq!(PAYLOADS_DROPPED.load(Ordering::SeqCst), 1);

        // A payload whose own drop panics: dropped too, down the chain.
        static CHAIN_DROPPED: AtomicUsize = AtomicUsize::new(0);
        struct Chain(usize);
        impl Drop for Chain {
            fn drop(&mut self) {
                CHAIN_DROPPED.fetch_add(1, Ordering::SeqCst);
                if self.0 > 0 {
                    std::panic::panic_any(Chain(self.0 - 1));
                }
            }
        }
        drop_quietly(Chain(3));
        assert_eq!(CHAIN_DROPPED.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn payloads_keep_their_text_or_say_their_type() {
        let msg = |p: Box<dyn Any + Send>| message_of(p);
        assert_eq!(msg(Box::new("boom")), "boom");
        assert_eq!(msg(Box::new(String::from("bang"))), "bang");
        assert_eq!(msg(Box::new(42u32)), "panic payload of type u32: 42");
        let io = std::io::Error::other("disk on fire");
        assert_eq!(
            msg(Box::new(io)),
            "panic payload of type std::io::Error: disk on fire"
        );
        struct Opaque;
        assert_eq!(
            msg(Box::new(Opaque)),
            "panic payload of a type other than &str or String (not printable)"
        );
    }
}
