//! Arbitrary bytes into the snapshot envelope decoder.

use fsm_core::__private::timers_section_round_trip;
use fsm_core::store::{Codec, Limits, Snapshot};
use fsm_core::StateMachine;
use fsm_examples::registrar::Order;

use crate::alloc;

/// The payload bound the target decodes with: small, so that inputs reach it.
const LIMITS: Limits = Limits {
    max_payload: 64 << 10,
};

/// What decoding may allocate beyond the input: serde caps a sequence's preallocation at
/// 1 MiB whatever length its prefix claims; the rest is proportional to the input.
fn allocation_bound(input: usize) -> usize {
    3 * input + (1 << 20) + (16 << 10)
}

/// The first byte picks the mode: even, the rest is decoded as it is; odd, its last four bytes
/// are first replaced by the CRC32C of the bytes before them (resealed), so that mutations
/// get past the checksum and reach the header, journal and payload decoders. Then decodes the
/// bytes as an envelope holding a registrar order. Must hold: no panic; the most
/// bytes live at once while decoding stay within 3x the input + 1 MiB (a length field cannot
/// make the decoder allocate what the input does not hold); an envelope that verifies whole
/// also verifies as a prefix of the same length, and one that verifies as a prefix verifies
/// whole when cut there; input longer than the limits allow is refused; and a machine that
/// decodes re-encodes to an envelope that decodes to the same machine, sequence and journal;
/// a timers section that decodes re-encodes to one that decodes the same; an outbox section is
/// listed within the same allocation bound and re-frames to the same listing.
pub fn envelope_decode(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = rest.to_vec();
    if mode & 1 == 1 && bytes.len() >= 4 {
        let end = bytes.len() - 4;
        let crc = crc32c::crc32c(&bytes[..end]);
        bytes[end..].copy_from_slice(&crc.to_le_bytes());
    }
    decode(&bytes);
}

fn decode(data: &[u8]) {
    assert!(
        alloc::installed(),
        "envelope_decode needs fsm_fuzz_harness::alloc::Tracking as the global allocator"
    );
    let codec = Codec::<Order>::new(1).limits(LIMITS);
    let (decoded, peak) = alloc::peak_during(|| codec.decode_bytes(data));
    assert!(
        peak <= allocation_bound(data.len()),
        "decoding {} bytes allocated {peak} bytes at once (bound {})",
        data.len(),
        allocation_bound(data.len())
    );

    let whole = Snapshot::from_bytes(data.to_vec(), &LIMITS);
    let prefix = Snapshot::verify_prefix(data, &LIMITS);
    if whole.is_ok() {
        assert_eq!(prefix.as_ref().ok(), Some(&data.len()), "{prefix:?}");
    }
    if let Ok(n) = prefix {
        assert!(n <= data.len());
        let cut = Snapshot::from_bytes(data[..n].to_vec(), &LIMITS);
        assert!(
            cut.is_ok(),
            "a verified prefix of {n} bytes does not verify whole: {cut:?}"
        );
    }
    if data.len() > LIMITS.max_envelope() {
        assert!(
            whole.is_err() && decoded.is_err(),
            "an oversized envelope was accepted"
        );
    }

    if let (Ok((machine, seq)), Ok(snapshot)) = (&decoded, &whole) {
        // A timers section that decodes for this machine's state encodes to bytes that decode
        // to the same timers (and never panics or allocates past the bound on the way).
        let timers = snapshot.timers().and_then(|t| {
            let (again, peak) =
                alloc::peak_during(|| timers_section_round_trip::<Order>(t, machine.state()));
            assert!(
                peak <= allocation_bound(t.len()),
                "a timers section of {} bytes allocated {peak}",
                t.len()
            );
            let again = again.ok()?;
            let twice = timers_section_round_trip::<Order>(&again, machine.state())
                .unwrap_or_else(|e| panic!("a re-encoded timers section does not decode: {e}"));
            assert_eq!(twice, again, "the timers section does not round-trip");
            Some(again)
        });
        // An outbox section is read (metadata only, as `fsm show` reads one offline) within
        // the same allocation bound, and what it lists re-frames to the same listing.
        let id = fsm_core::store::MachineId::new("fuzz").expect("a valid id");
        let (owed, peak) = alloc::peak_during(|| fsm_core::kernel::owed_in(snapshot, &id));
        if let Some(outbox) = snapshot.outbox() {
            assert!(
                peak <= allocation_bound(outbox.len()),
                "an outbox section of {} bytes allocated {peak}",
                outbox.len()
            );
        }
        let outbox = owed.ok().and(snapshot.outbox());
        let again = match (snapshot.journal(), &timers) {
            (Some(journal), _) => codec.encode_framed(
                machine,
                *seq,
                fsm_core::store::Sections {
                    journal: Some(journal),
                    timers: timers.as_deref(),
                    outbox,
                    state: None,
                    sealed: None,
                },
            ),
            (None, _) => codec.encode(machine, *seq),
        }
        .unwrap_or_else(|e| panic!("{machine:?} decoded but does not encode: {e}"));
        assert_eq!(again.journal(), snapshot.journal());
        assert_eq!(
            again.state(),
            Some(machine.state_name()),
            "the codec records the state's name"
        );
        if let (Some(_), Ok(listed)) =
            (snapshot.journal(), fsm_core::kernel::owed_in(snapshot, &id))
        {
            // An outbox that lists re-frames to one that lists the same (one that does not
            // decode was left out above).
            assert_eq!(
                fsm_core::kernel::owed_in(&again, &id).ok(),
                Some(listed),
                "the outbox does not re-frame to the same listing"
            );
        }
        let (back, back_seq) = codec
            .decode_bytes(again.as_bytes())
            .unwrap_or_else(|e| panic!("{machine:?} re-encoded does not decode: {e}"));
        assert_eq!((&back, back_seq), (machine, *seq));
    }
    if decoded.is_ok() {
        assert!(
            whole.is_ok(),
            "the codec accepted bytes the envelope refuses"
        );
    }
}
