//! Just enough WebSocket framing (RFC 6455 §5.2) for Sluice to end a session it relays with a
//! Close frame instead of a bare TCP close (which clients report as `1006`, "abnormal"): where
//! frames begin in a byte stream that is copied as it arrives, whether a side already sent its
//! Close, and the bytes of a Close frame. Payloads are never looked at.

/// The endpoint is going away: Sluice ends the session (idle timeout, max duration, the other
/// side left).
pub const GOING_AWAY: u16 = 1001;
/// The gateway got an invalid response: the upstream failed or went away without a Close.
pub const BAD_GATEWAY: u16 = 1014;

/// A Close frame's reason is at most 123 bytes (a control frame's payload is at most 125).
const MAX_REASON: usize = 123;
const OPCODE_CLOSE: u8 = 0x8;

/// Follows one direction of a WebSocket connection chunk by chunk, holding no payload: only the
/// few header bytes of a frame split across chunks.
#[derive(Debug, Default)]
pub struct FrameTracker {
    /// Header bytes of the frame being read (a header is at most 14 bytes).
    header: [u8; 14],
    header_len: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    close_sent: bool,
    /// Bytes that are not frames as RFC 6455 has them (an extension's reserved bits, a length
    /// with its top bit set): Sluice no longer knows where frames begin and never writes one.
    lost: bool,
}

impl FrameTracker {
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.lost {
            if self.payload_left > 0 {
                let skip = self.payload_left.min(bytes.len() as u64);
                self.payload_left -= skip;
                bytes = &bytes[skip as usize..];
                continue;
            }
            self.header[self.header_len] = bytes[0];
            self.header_len += 1;
            bytes = &bytes[1..];
            self.try_end_header();
        }
    }

    /// True once this side has sent its Close frame (it ends its half of the session in order).
    pub fn closed(&self) -> bool {
        self.close_sent
    }

    /// True when a frame of Sluice's own may be written now: between two frames, and the side
    /// has not closed.
    pub fn may_send_close(&self) -> bool {
        !self.lost && !self.close_sent && self.header_len == 0 && self.payload_left == 0
    }

    fn try_end_header(&mut self) {
        let header = &self.header[..self.header_len];
        let Some(size) = header_size(header) else {
            return;
        };
        if header.len() < size {
            return;
        }
        let len = match header[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
            127 => {
                let len = u64::from_be_bytes(header[2..10].try_into().unwrap_or_default());
                if len >> 63 != 0 {
                    self.lost = true;
                }
                len
            }
            n => u64::from(n),
        };
        if header[0] & 0x0f == OPCODE_CLOSE {
            self.close_sent = true;
        }
        self.payload_left = len;
        self.header_len = 0;
    }
}

/// The size of a frame header from its first two bytes: 2, plus 2 or 8 for an extended length,
/// plus 4 for a masking key.
fn header_size(header: &[u8]) -> Option<usize> {
    let second = *header.get(1)?;
    let length = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    Some(2 + length + mask)
}

/// A Close frame with `code` and `reason` (cut to 123 bytes at a character boundary). Frames a
/// client sends are masked (`mask`: the key); a server's are not.
pub fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut cut = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    let mut frame = vec![0x80 | OPCODE_CLOSE];
    match mask {
        Some(key) => {
            frame.push(0x80 | payload.len() as u8);
            frame.extend_from_slice(&key);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => {
            frame.push(payload.len() as u8);
            frame.extend_from_slice(&payload);
        }
    }
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(first: u8, payload_len: usize, mask: bool) -> Vec<u8> {
        let mut out = vec![first];
        let mask_bit = if mask { 0x80 } else { 0 };
        match payload_len {
            n if n < 126 => out.push(mask_bit | n as u8),
            n if n < 65536 => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if mask {
            out.extend_from_slice(&[1, 2, 3, 4]);
        }
        out.extend(std::iter::repeat_n(b'x', payload_len));
        out
    }

    #[test]
    fn frame_boundaries_are_found_whatever_the_chunking() {
        // Small, 16-bit and 64-bit lengths, masked or not, and an empty payload.
        let mut stream = Vec::new();
        let mut ends = Vec::new();
        for (len, mask) in [
            (5, false),
            (300, true),
            (70_000, false),
            (0, true),
            (125, false),
        ] {
            stream.extend(frame(0x82, len, mask));
            ends.push(stream.len());
        }
        for chunk in [1, 2, 3, 7, 13, 4096, stream.len()] {
            let mut tracker = FrameTracker::default();
            let mut fed = 0;
            for piece in stream.chunks(chunk) {
                tracker.feed(piece);
                fed += piece.len();
                assert_eq!(
                    tracker.may_send_close(),
                    ends.contains(&fed),
                    "chunks of {chunk}, after {fed} bytes"
                );
            }
        }
    }

    #[test]
    fn a_side_that_sent_its_close_gets_no_other() {
        let mut tracker = FrameTracker::default();
        tracker.feed(&frame(0x81, 3, true));
        assert!(tracker.may_send_close());
        tracker.feed(&close_frame(1000, "bye", Some([9, 8, 7, 6])));
        assert!(!tracker.may_send_close());
        // A fragment's continuation and a ping in between are frames like any other.
        let mut tracker = FrameTracker::default();
        tracker.feed(&frame(0x01, 4, false));
        tracker.feed(&frame(0x89, 0, false));
        tracker.feed(&frame(0x80, 4, false));
        assert!(tracker.may_send_close());
    }

    #[test]
    fn a_length_no_frame_can_have_means_frames_are_lost() {
        let mut tracker = FrameTracker::default();
        let mut bad = vec![0x82, 127];
        bad.extend_from_slice(&u64::MAX.to_be_bytes());
        tracker.feed(&bad);
        tracker.feed(&frame(0x81, 1, false));
        assert!(!tracker.may_send_close());
    }

    #[test]
    fn close_frames_carry_code_and_reason_masked_or_not() {
        assert_eq!(
            close_frame(GOING_AWAY, "idle", None),
            [0x88, 6, 0x03, 0xe9, b'i', b'd', b'l', b'e']
        );
        let key = [0x12, 0x34, 0x56, 0x78];
        let masked = close_frame(BAD_GATEWAY, "up", Some(key));
        assert_eq!(&masked[..6], &[0x88, 0x84, 0x12, 0x34, 0x56, 0x78]);
        let unmasked: Vec<u8> = masked[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        assert_eq!(unmasked, [0x03, 0xf6, b'u', b'p']);
        // A long reason is cut at a character boundary, within a control frame's 125 bytes.
        let long = close_frame(GOING_AWAY, &"é".repeat(100), None);
        assert_eq!(long[1] as usize, long.len() - 2);
        assert!(long.len() - 2 <= 125);
        assert!(std::str::from_utf8(&long[4..]).is_ok());
    }
}
