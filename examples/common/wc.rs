//! The wc-exact count shared by the examples (`analyze`, `redis_worker`, `redis_feed`):
//! included with `#[path = "common/wc.rs"] mod wc;` (a file in a subfolder of `examples/` is
//! not an example of its own).
//!
//! Counts are those of GNU `wc` in the C locale, on any bytes: lines are newline bytes; a word
//! is a maximal run of bytes other than space, \t, \n, \v, \f, \r that holds at least one
//! printable ASCII byte (0x21..=0x7e). Other bytes (controls, bytes >= 0x80) neither start nor
//! end a word.

use rustc_hash::FxHashMap;

/// Longer words count in the totals but not in the most common words (bounds the memory a
/// binary file or a minified line can take).
pub const MAX_WORD: usize = 64;

/// How often each word occurs (words of at most [`MAX_WORD`] bytes). rustc's FxHash
/// (`rustc-hash`) is several times faster than std's SipHash on short keys, which matters
/// here (a hash per word). It does not resist HashDoS, which a local tool need not.
pub type WordCounts = FxHashMap<Box<[u8]>, u64>;

/// What `wc` prints for one input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub lines: u64,
    pub words: u64,
    pub bytes: u64,
}

/// `LINES WORDS BYTES`, the numbers `wc` prints, separated by single spaces (the result the
/// Redis worker stores).
impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.lines, self.words, self.bytes)
    }
}

/// Byte classes of the C locale.
const SPACE: u8 = 0; // space, \t, \n, \v, \f, \r: ends a word
const PRINT: u8 = 1; // 0x21..=0x7e: makes a run of non-space bytes a word
const OTHER: u8 = 2; // controls, DEL, bytes >= 0x80: part of a run, but never a word alone

static CLASS: [u8; 256] = {
    let mut class = [OTHER; 256];
    let mut b = 0x21;
    while b <= 0x7e {
        class[b] = PRINT;
        b += 1;
    }
    let spaces = [b' ', b'\t', b'\n', 0x0b, 0x0c, b'\r'];
    let mut i = 0;
    while i < spaces.len() {
        class[spaces[i] as usize] = SPACE;
        i += 1;
    }
    class
};

/// Counts lines, words and bytes over a stream fed in chunks; a word may span chunks.
pub struct Counter<'a> {
    counts: Counts,
    /// Inside a run of non-space bytes.
    in_run: bool,
    /// The current run holds a printable byte, so it is a word.
    printable: bool,
    /// The current run's first `MAX_WORD + 1` bytes (when keeping words).
    word: Vec<u8>,
    words: Option<&'a mut WordCounts>,
}

impl<'a> Counter<'a> {
    pub fn new(words: Option<&'a mut WordCounts>) -> Self {
        Counter {
            counts: Counts::default(),
            in_run: false,
            printable: false,
            word: Vec::with_capacity(MAX_WORD + 1),
            words,
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        self.counts.bytes += chunk.len() as u64;
        let mut start = 0; // where the current run starts in this chunk
        for (i, &b) in chunk.iter().enumerate() {
            match CLASS[usize::from(b)] {
                SPACE => {
                    self.counts.lines += u64::from(b == b'\n');
                    if self.in_run {
                        self.keep(&chunk[start..i]);
                        self.end_run();
                    }
                }
                class => {
                    if !self.in_run {
                        self.in_run = true;
                        start = i;
                    }
                    self.printable |= class == PRINT;
                }
            }
        }
        if self.in_run {
            self.keep(&chunk[start..]); // the run goes on in the next chunk
        }
    }

    fn keep(&mut self, part: &[u8]) {
        if self.words.is_some() && self.word.len() <= MAX_WORD {
            let room = MAX_WORD + 1 - self.word.len();
            self.word.extend_from_slice(&part[..part.len().min(room)]);
        }
    }

    fn end_run(&mut self) {
        if self.printable {
            self.counts.words += 1;
            if let Some(words) = self.words.as_deref_mut()
                && self.word.len() <= MAX_WORD
            {
                match words.get_mut(self.word.as_slice()) {
                    Some(n) => *n += 1,
                    None => {
                        words.insert(self.word.as_slice().into(), 1);
                    }
                }
            }
        }
        self.in_run = false;
        self.printable = false;
        self.word.clear();
    }

    pub fn finish(mut self) -> Counts {
        if self.in_run {
            self.end_run();
        }
        self.counts
    }
}
