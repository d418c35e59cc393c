//! PostgreSQL's `COPY … FROM STDIN` text format (the default format of COPY): what the store
//! writes its records with and what the `postgres` target loads tables with. One encoder, so
//! both escape exactly as PostgreSQL's "File Formats" section of the COPY reference says:
//! backslash, newline, carriage return and the delimiter (tab) are escaped with a backslash,
//! `\N` is NULL, every other byte (quotes, emoji, any UTF-8) is taken as it is.

/// NULL in COPY's text format.
pub const NULL: &str = "\\N";

/// Appends `value` to a row of COPY's text format: backslash, tab, newline and carriage return
/// are escaped, everything else is taken as it is.
pub fn push_copy_text(row: &mut String, value: &str) {
    let special = |byte: u8| matches!(byte, b'\\' | b'\t' | b'\n' | b'\r');
    // Most values have nothing to escape (JSON text escapes all but the backslash itself): one
    // pass without early exit, which the compiler vectorises, tells.
    if !value.bytes().fold(false, |found, byte| found | special(byte)) {
        row.push_str(value);
        return;
    }
    let mut start = 0;
    for (i, byte) in value.bytes().enumerate() {
        let escaped = match byte {
            b'\\' => "\\\\",
            b'\t' => "\\t",
            b'\n' => "\\n",
            b'\r' => "\\r",
            _ => continue,
        };
        // The bytes matched are ASCII, so `i` is a character boundary.
        row.push_str(&value[start..i]);
        row.push_str(escaped);
        start = i + 1;
    }
    row.push_str(&value[start..]);
}

#[cfg(test)]
mod tests {
    use super::push_copy_text;

    #[test]
    fn copy_text_escapes_what_copy_would_read_as_structure() {
        let mut row = String::new();
        push_copy_text(&mut row, "a\tb\nc\rd\\e \"f\" ü");
        assert_eq!(row, "a\\tb\\nc\\rd\\\\e \"f\" ü");
        push_copy_text(&mut row, "|plain ü|");
        assert_eq!(row, "a\\tb\\nc\\rd\\\\e \"f\" ü|plain ü|");
    }
}
