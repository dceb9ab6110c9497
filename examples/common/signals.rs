//! Ctrl-C (and SIGTERM/SIGHUP) for the examples that stop cleanly: the first signal sends on
//! the returned channel, a second one exits at once (status 130).

use channel_orchestrator::crossbeam_channel::{Receiver, bounded};

/// Installs the handler; `who` names the program in its messages.
pub fn interrupts(who: &'static str) -> Receiver<()> {
    let (tx, rx) = bounded(1);
    let mut signals = 0;
    let installed = ctrlc::set_handler(move || {
        signals += 1;
        if signals > 1 {
            eprintln!("\n{who}: interrupted twice: exiting at once");
            std::process::exit(130);
        }
        let _ = tx.try_send(());
    });
    if let Err(e) = installed {
        eprintln!("{who}: warning: a signal will not stop cleanly: {e}");
    }
    rx
}
