//! The Pico's serial console commands (`gan-embedded/src/console.rs`, compiled here for the
//! host).

#[path = "../../gan-embedded/src/console.rs"]
#[allow(dead_code)]
mod console;

use console::{Command, parse_command};

fn generate(seed: Option<u64>, class: Option<u32>) -> Option<Command> {
    Some(Command::Generate { seed, class })
}

#[test]
fn a_bare_number_is_the_class_of_a_conditional_model_and_the_seed_otherwise() {
    assert_eq!(parse_command(b"7", 10), generate(None, Some(7)));
    assert_eq!(parse_command(b"7", 0), generate(Some(7), None));
    assert_eq!(parse_command(b" 7 s42\r", 10), generate(Some(42), Some(7)));
    assert_eq!(parse_command(b"s42 7", 10), generate(Some(42), Some(7)));
    assert_eq!(parse_command(b"42 c7", 0), generate(Some(42), Some(7)));
    assert_eq!(parse_command(b"c7 42", 0), generate(Some(42), Some(7)));
    assert_eq!(parse_command(b"s9", 0), generate(Some(9), None));
    // An out-of-range class parses; the firmware answers it with the model's class count.
    assert_eq!(parse_command(b"12", 10), generate(None, Some(12)));
}

#[test]
fn other_lines_are_help_info_or_nothing() {
    assert_eq!(parse_command(b"info", 10), Some(Command::Info));
    assert_eq!(parse_command(b"help", 0), Some(Command::Help));
    assert_eq!(parse_command(b"?", 0), Some(Command::Help));
    for bad in [&b""[..], b"  ", b"7 8", b"s1 s2", b"c1 c2", b"x", b"c", b"s-1", b"7 c8", b"\xff"] {
        assert_eq!(parse_command(bad, 10), None, "{:?}", String::from_utf8_lossy(bad));
    }
    assert_eq!(parse_command(b"7 8", 0), None);
}
