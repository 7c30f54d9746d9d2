//! The TLS ClientHello reader: reassembly across records and a zero-copy walk of its extensions.
//! (Being written: see issue 12.)
