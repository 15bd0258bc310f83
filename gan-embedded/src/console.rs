//! The command language of the Pico's serial console, kept free of any board code so the host
//! tests can include this file and check it (`tests/tests/console.rs`).
//!
//! A line is `info`, `help` (or `?`), or up to one seed and one class in any order:
//! - `s42` is seed 42 and `c7` is class 7;
//! - a bare number is the class for a conditional model ("7" draws a 7) and the seed for an
//!   unconditional one;
//! - without a seed, the console's own counter supplies the next one, so typing `7` again
//!   draws a different 7.

/// A command typed on the console.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Generate one digit.
    Generate {
        /// The noise seed, if given.
        seed: Option<u64>,
        /// The class, if given (conditional models).
        class: Option<u32>,
    },
    /// Describe the weights and the model.
    Info,
    /// Show the command list.
    Help,
}

/// The command list, for `help` and for lines that do not parse.
pub const HELP: &[u8] =
    b"type a digit and Enter to draw it (7), or a seed (s42), or both (7 s42); \
a model without classes takes a bare number as the seed; `info` shows the model\r\n";

/// Parses one line for a model with `classes` classes (0: unconditional); `None` if it is not
/// a command.
pub fn parse_command(line: &[u8], classes: usize) -> Option<Command> {
    let text = core::str::from_utf8(line).ok()?.trim();
    match text {
        "info" => return Some(Command::Info),
        "help" | "?" => return Some(Command::Help),
        "" => return None,
        _ => {}
    }
    let (mut seed, mut class) = (None, None);
    for word in text.split_ascii_whitespace() {
        let (slot, digits) = if let Some(c) = word.strip_prefix('c') {
            (&mut class, c)
        } else if let Some(s) = word.strip_prefix('s') {
            let v: u64 = s.parse().ok()?;
            if seed.replace(v).is_some() {
                return None;
            }
            continue;
        } else if classes > 0 {
            (&mut class, word)
        } else {
            let v: u64 = word.parse().ok()?;
            if seed.replace(v).is_some() {
                return None;
            }
            continue;
        };
        let v: u32 = digits.parse().ok()?;
        if slot.replace(v).is_some() {
            return None;
        }
    }
    Some(Command::Generate { seed, class })
}
