//! Tracks whether the bytes relayed so far end exactly between two SSE events, by the WHATWG
//! line rules (LF, CR or CRLF end a line; a blank line ends an event), across chunks split
//! anywhere. Only at such a boundary may the relay insert its own bytes (heartbeats, terminal
//! events) without corrupting an upstream event.

#[derive(Debug, Clone)]
pub struct EventBoundary {
    /// The current (unterminated) line has at least one byte.
    line_has_content: bool,
    /// A non-blank line was seen since the last blank line: an event (or comment block) is open.
    event_open: bool,
    /// The previous chunk ended with CR, so a leading LF belongs to that line end.
    last_was_cr: bool,
}

impl Default for EventBoundary {
    fn default() -> Self {
        EventBoundary::new()
    }
}

impl EventBoundary {
    pub fn new() -> Self {
        EventBoundary {
            line_has_content: false,
            event_open: false,
            last_was_cr: false,
        }
    }

    /// True when nothing of an event is pending: the stream so far ends on a blank line (or
    /// nothing has been sent yet).
    pub fn at_boundary(&self) -> bool {
        !self.line_has_content && !self.event_open
    }

    /// True when the last line is unterminated (a terminator must precede inserted bytes).
    pub fn mid_line(&self) -> bool {
        self.line_has_content
    }

    pub fn observe(&mut self, chunk: &[u8]) {
        let mut i = 0;
        if self.last_was_cr && chunk.first() == Some(&b'\n') {
            i = 1;
        }
        if !chunk.is_empty() {
            self.last_was_cr = false;
        }
        while i < chunk.len() {
            let Some(offset) = memchr::memchr2(b'\n', b'\r', &chunk[i..]) else {
                self.line_has_content = true;
                return;
            };
            let end = i + offset;
            if end > i {
                self.line_has_content = true;
            }
            // A line ends here: a blank one closes the open event.
            self.event_open = self.line_has_content;
            self.line_has_content = false;
            i = end + 1;
            if chunk[end] == b'\r' {
                if i == chunk.len() {
                    self.last_was_cr = true;
                } else if chunk[i] == b'\n' {
                    i += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(chunks: &[&[u8]]) -> EventBoundary {
        let mut b = EventBoundary::new();
        for c in chunks {
            b.observe(c);
        }
        b
    }

    #[test]
    fn start_is_a_boundary() {
        assert!(EventBoundary::new().at_boundary());
    }

    #[test]
    fn blank_line_ends_an_event_for_every_line_ending() {
        for stream in [
            &b"data: a\n\n"[..],
            b"data: a\r\r",
            b"data: a\r\n\r\n",
            b"event: x\ndata: a\ndata: b\n\n",
            b": comment\n\n",
        ] {
            assert!(after(&[stream]).at_boundary(), "{stream:?}");
        }
    }

    #[test]
    fn open_event_is_not_a_boundary() {
        for stream in [
            &b"data: a"[..],
            b"data: a\n",
            b"data: a\r\n",
            b"data: a\n\ndata: b\n",
        ] {
            assert!(!after(&[stream]).at_boundary(), "{stream:?}");
        }
        assert!(after(&[b"data: a"]).mid_line());
        assert!(!after(&[b"data: a\n"]).mid_line());
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_end() {
        // "data: a\r" + "\n" + "\r\n": the LF after the CR is not a blank line of its own.
        let b = after(&[b"data: a\r", b"\n"]);
        assert!(!b.at_boundary());
        let b = after(&[b"data: a\r", b"\n", b"\r\n"]);
        assert!(b.at_boundary());
        let b = after(&[b"data: a\r", b"\n\r", b"\n"]);
        assert!(b.at_boundary());
    }

    #[test]
    fn every_split_point_agrees_with_whole_stream() {
        let stream: &[u8] = b"event: a\r\ndata: 1\r\n\r\ndata: 2\n\ndata: 3\r\rdata: \xc3\xa9\n";
        for end in 0..=stream.len() {
            let whole = after(&[&stream[..end]]).at_boundary();
            for split in 0..=end {
                let parts = after(&[&stream[..split], &stream[split..end]]).at_boundary();
                assert_eq!(whole, parts, "end {end} split {split}");
            }
        }
    }
}
