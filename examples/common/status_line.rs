//! A live status line on stderr for the examples: redrawn in place on a terminal (`\r` back
//! to column 0, `ESC [2K` erases the old line, in one write so a note from the same thread
//! never lands in the middle of it), a plain line elsewhere; notes stay above it.
#![allow(dead_code)] // each example uses a part

use std::io::{self, IsTerminal, Write};

pub struct StatusLine {
    terminal: bool,
    /// A line is drawn and not yet erased (terminal only).
    drawn: bool,
}

impl StatusLine {
    pub fn new() -> Self {
        StatusLine {
            terminal: io::stderr().is_terminal(),
            drawn: false,
        }
    }

    /// Whether stderr is a terminal (the line is redrawn in place).
    pub fn is_terminal(&self) -> bool {
        self.terminal
    }

    /// Shows `text`: in place of the current line on a terminal, as a new line elsewhere.
    pub fn show(&mut self, text: &str) {
        if self.terminal {
            write(&format!("\r\x1b[2K{text}"));
            self.drawn = true;
        } else {
            write(&format!("{text}\n"));
        }
    }

    /// A line that stays, above the status line (which the next `show` redraws).
    pub fn note(&mut self, text: &str) {
        let erase = if self.drawn { "\r\x1b[2K" } else { "" };
        write(&format!("{erase}{text}\n"));
        self.drawn = false;
    }

    /// Erases the status line, so what follows starts on a clean line.
    pub fn finish(&mut self) {
        if self.drawn {
            write("\r\x1b[2K");
            self.drawn = false;
        }
    }
}

fn write(text: &str) {
    let mut err = io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    let _ = err.flush();
}
