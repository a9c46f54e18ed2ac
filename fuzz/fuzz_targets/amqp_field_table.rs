//! A length-prefixed field table: decoding must not panic (nor overflow the
//! stack), and a decoded table must encode to bytes that decode to it again.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use liebre_amqp_codec::FieldTable;

fuzz_target!(|data: &[u8]| {
    let Ok(table) = FieldTable::decode(&Bytes::copy_from_slice(data)) else {
        return;
    };
    let mut out = BytesMut::new();
    if let Err(e) = table.encode(&mut out) {
        panic!("decoded table does not encode: {e}: {table:?}");
    }
    let again = FieldTable::decode(&out.freeze());
    assert_eq!(again.as_ref(), Ok(&table), "re-decoded table differs");
});
