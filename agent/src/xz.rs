//! Bounded xz decoding of untrusted bytes (a `.deb`'s `control.tar.xz`, an AppImage's squashfs
//! blocks), read as root.
//!
//! Owns: the two bounds every xz decode here runs under — the dictionary the stream declares is
//! allocated only up to `max_dict` (refused past it, before any output), and the output is
//! streamed to the caller in 64 KiB pieces and refused as soon as it passes `max_output` — so
//! memory stays at `max_dict` plus one piece whatever the stream claims. Does not own: what the
//! bytes mean (the callers' readers).
//!
//! Why not lzma-rs (used before): its LZMA2 decoder keeps a block's whole output in memory and
//! writes it out only at a dictionary reset or at the end, so no output cap could stop it; a
//! control archive of 300 KB could make the agent hold gigabytes. xz4rust (a port of
//! xz-embedded) decodes into a fixed-size window and hands back output as it goes.

/// Why a decode stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XzError {
    #[error("decompresses to more than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("declares a dictionary of {declared} bytes (at most {limit} are allowed)")]
    Dictionary { declared: u64, limit: usize },
    #[error("not a complete, valid xz stream: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Sink(String),
}

/// The size of each piece of output handed to the sink.
const PIECE: usize = 64 * 1024;

/// Decodes the xz stream at the start of `data` (bytes after its end are ignored), passing the
/// output to `sink` piece by piece; at most `max_output` bytes of output and a dictionary of at
/// most `max_dict` bytes. A sink error stops the decode (`XzError::Sink`).
pub fn decode(
    data: &[u8],
    max_output: u64,
    max_dict: usize,
    mut sink: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<u64, XzError> {
    // The dictionary starts at the smallest size xz allows and grows to what the stream's
    // header declares, never past `max_dict`.
    let mut decoder = xz4rust::XzDecoder::in_heap_with_alloc_dict_size(xz4rust::DICT_SIZE_MIN, max_dict);
    let mut out = vec![0u8; PIECE];
    let mut input = data;
    let mut total: u64 = 0;
    loop {
        let step = match decoder.decode(input, &mut out) {
            Ok(step) => step,
            Err(xz4rust::XzError::DictionaryTooLarge(declared)) => {
                return Err(XzError::Dictionary { declared, limit: max_dict })
            }
            Err(e) => return Err(XzError::Corrupt(e.to_string())),
        };
        let produced = step.output_produced();
        total += produced as u64;
        if total > max_output {
            return Err(XzError::TooLarge { limit: max_output });
        }
        if produced > 0 {
            sink(&out[..produced]).map_err(XzError::Sink)?;
        }
        input = &input[step.input_consumed()..];
        if step.is_end_of_stream() {
            return Ok(total);
        }
        if !step.made_progress() {
            return Err(XzError::Corrupt("the stream ends early".into()));
        }
    }
}

/// Decodes into a vector of at most `max_output` bytes (see [`decode`]).
pub fn decode_to_vec(data: &[u8], max_output: u64, max_dict: usize) -> Result<Vec<u8>, XzError> {
    let mut out = Vec::new();
    decode(data, max_output, max_dict, |piece| {
        out.extend_from_slice(piece);
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `xz` (the real tool) with `args`, on `input`; `None` when it is not installed.
    fn xz(input: &[u8], args: &[&str]) -> Option<Vec<u8>> {
        use std::io::Write as _;
        let mut child = std::process::Command::new("xz")
            .args(args)
            .args(["-c", "-T1"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .ok()?;
        let mut stdin = child.stdin.take()?;
        let data = input.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&data));
        let out = child.wait_with_output().ok()?;
        writer.join().ok()?.ok()?;
        out.status.success().then_some(out.stdout)
    }

    fn sample(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[1] % 7 + b'a').collect()
    }

    #[test]
    fn real_xz_streams_decode_to_their_input() {
        if xz(b"probe", &[]).is_none() {
            crate::testutil::skip("needs the xz tool");
            return;
        }
        for (n, args) in [
            (0, &["-6"][..]),
            (100, &["-0"][..]),
            (300_000, &["-6", "--check=crc32"][..]),
            (300_000, &["-1", "--check=sha256", "--block-size=65536"][..]),
            (200_000, &["--x86", "--lzma2=preset=1"][..]),
        ] {
            let data = sample(n);
            let packed = xz(&data, args).unwrap();
            assert_eq!(decode_to_vec(&packed, n as u64, 8 << 20), Ok(data.clone()), "{n} {args:?}");
            if n > 0 {
                assert_eq!(
                    decode_to_vec(&packed, n as u64 - 1, 8 << 20),
                    Err(XzError::TooLarge { limit: n as u64 - 1 }),
                    "{n} {args:?}"
                );
                assert!(
                    matches!(decode_to_vec(&packed[..packed.len() - 5], n as u64, 8 << 20), Err(XzError::Corrupt(_))),
                    "truncated: {n} {args:?}"
                );
            }
        }
        // A dictionary larger than allowed is refused before any output.
        let packed = xz(&sample(1000), &["-6"]).unwrap();
        assert_eq!(
            decode_to_vec(&packed, 1 << 20, 1 << 20),
            Err(XzError::Dictionary { declared: 8 << 20, limit: 1 << 20 })
        );
    }

    /// A stream that decompresses to far more than the cap is stopped at the cap: the decoder
    /// holds its window and one piece, never the output (the old decoder held all of it).
    #[test]
    fn a_bomb_stops_at_the_cap() {
        let Some(bomb) = xz(&vec![0u8; 64 << 20], &["-1"]) else {
            crate::testutil::skip("needs the xz tool");
            return;
        };
        assert!(bomb.len() < 64 << 10, "64 MiB of zeros compress to {} bytes", bomb.len());
        let mut seen = 0u64;
        let r = decode(&bomb, 1 << 20, 8 << 20, |piece| {
            seen += piece.len() as u64;
            Ok(())
        });
        assert_eq!(r, Err(XzError::TooLarge { limit: 1 << 20 }));
        assert!(seen <= 1 << 20, "handed out {seen} bytes");
    }
}
