//! HPACK (RFC 7541), the header compression of HTTP/2, without I/O: a decoder that keeps the
//! peer's dynamic table in step with the peer's encoder, and an encoder that keeps no table at
//! all (static indices and literals only), so the agent never has to announce a table size.

use std::collections::VecDeque;

/// The dynamic table size a decoder allows (SETTINGS_HEADER_TABLE_SIZE's default, which the agent
/// does not change).
pub(crate) const TABLE_SIZE: usize = 4096;

/// What RFC 7541 §4.1 adds to each dynamic entry's size, so that empty fields still cost room.
const ENTRY_OVERHEAD: usize = 32;
/// Continuation octets one integer may take: five carry 35 bits, more than any size or index needs.
const MAX_CONTINUATION_OCTETS: u32 = 5;

/// Why a header block cannot be decoded: each one is a connection error of type
/// COMPRESSION_ERROR (RFC 9113 §4.3), since the two tables may no longer agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HpackError {
    /// The block ends inside an integer, a string or a representation.
    Truncated,
    /// An integer too large for any length, index or size.
    IntegerOverflow,
    /// Index 0, or past the end of the static and dynamic tables.
    BadIndex,
    /// A dynamic table size update above the allowed size, or after the block's first field.
    TableSizeUpdate,
    /// A Huffman string with EOS in it, or padding longer than 7 bits or not all ones.
    Huffman,
}

impl std::fmt::Display for HpackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HpackError::Truncated => "truncated header block",
            HpackError::IntegerOverflow => "integer too large",
            HpackError::BadIndex => "invalid table index",
            HpackError::TableSizeUpdate => "invalid dynamic table size update",
            HpackError::Huffman => "invalid huffman string",
        })
    }
}

impl std::error::Error for HpackError {}

/// Decodes the header blocks of one connection's direction, in the order they arrive.
pub(crate) struct Decoder {
    table: DynamicTable,
    /// The most the peer may size its table to (what our SETTINGS allow).
    allowed_size: usize,
    /// Huffman-decoded names and values, reused from string to string.
    name_scratch: Vec<u8>,
    value_scratch: Vec<u8>,
    /// The first error: after it the table may no longer match the peer's.
    failed: Option<HpackError>,
}

impl Decoder {
    /// A decoder for a peer that may use a dynamic table of up to `TABLE_SIZE` octets.
    pub(crate) fn new() -> Decoder {
        Decoder {
            table: DynamicTable::new(TABLE_SIZE),
            allowed_size: TABLE_SIZE,
            name_scratch: Vec::new(),
            value_scratch: Vec::new(),
            failed: None,
        }
    }

    /// Appendix C's response examples use a 256-octet table.
    #[cfg(test)]
    fn with_table_size(size: usize) -> Decoder {
        Decoder { table: DynamicTable::new(size), allowed_size: size, ..Decoder::new() }
    }

    /// Decodes one whole header block (RFC 7541 §3), calling `field(name, value)` for each
    /// header field in order. The table is kept in step even when the caller ignores fields.
    /// An error leaves the decoder unusable (the connection is closed with COMPRESSION_ERROR).
    pub(crate) fn decode(
        &mut self,
        block: &[u8],
        mut field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        self.decode_block(block, &mut field).inspect_err(|&error| self.failed = Some(error))
    }

    fn decode_block(&mut self, block: &[u8], field: &mut impl FnMut(&[u8], &[u8])) -> Result<(), HpackError> {
        let mut input = Reader { rest: block };
        let mut fields_seen = false;
        while let Some(first) = input.peek() {
            if first & 0x80 != 0 {
                // §6.1 indexed field
                let (name, value) = self.table.field(input.integer(7)?)?;
                field(name, value);
            } else if first & 0xc0 == 0x40 {
                // §6.2.1 literal with incremental indexing
                self.literal(&mut input, 6, true, field)?;
            } else if first & 0xe0 == 0x20 {
                // §6.3 dynamic table size update; §4.2 allows it only before the first field
                let size = input.integer(5)?;
                if fields_seen || size > self.allowed_size {
                    return Err(HpackError::TableSizeUpdate);
                }
                self.table.resize(size);
                continue;
            } else {
                // §6.2.2 without indexing (0000) and §6.2.3 never indexed (0001): to a decoder,
                // the same thing; only intermediaries re-encoding the field must tell them apart.
                self.literal(&mut input, 4, false, field)?;
            }
            fields_seen = true;
        }
        Ok(())
    }

    fn literal(
        &mut self,
        input: &mut Reader<'_>,
        prefix_bits: u32,
        add_to_table: bool,
        field: &mut impl FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        let Decoder { table, name_scratch, value_scratch, .. } = self;
        let index = input.integer(prefix_bits)?;
        if add_to_table {
            let name: &[u8] = if index == 0 {
                input.string(name_scratch)?
            } else {
                // Copied out: the insertion may evict the entry the name comes from (§4.4).
                name_scratch.clear();
                name_scratch.extend_from_slice(table.field(index)?.0);
                name_scratch
            };
            let value = input.string(value_scratch)?;
            field(name, value);
            table.insert(name, value);
        } else {
            let name = if index == 0 { input.string(name_scratch)? } else { table.field(index)?.0 };
            field(name, input.string(value_scratch)?);
        }
        Ok(())
    }
}

/// The peer's bytes not yet decoded.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    fn octet(&mut self) -> Result<u8, HpackError> {
        let (&octet, rest) = self.rest.split_first().ok_or(HpackError::Truncated)?;
        self.rest = rest;
        Ok(octet)
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], HpackError> {
        let (taken, rest) = self.rest.split_at_checked(len).ok_or(HpackError::Truncated)?;
        self.rest = rest;
        Ok(taken)
    }

    /// An integer with a `prefix_bits`-bit prefix in the next octet (§5.1); the octet's other
    /// bits are the representation's flags, which the caller has already looked at.
    fn integer(&mut self, prefix_bits: u32) -> Result<usize, HpackError> {
        let prefix_max = (1u8 << prefix_bits) - 1;
        let prefix = self.octet()? & prefix_max;
        if prefix < prefix_max {
            return Ok(usize::from(prefix));
        }
        let mut value = u64::from(prefix);
        for continuation in 0..MAX_CONTINUATION_OCTETS {
            let octet = self.octet()?;
            value += u64::from(octet & 0x7f) << (7 * continuation);
            if octet & 0x80 == 0 {
                let value = u32::try_from(value).map_err(|_| HpackError::IntegerOverflow)?;
                return usize::try_from(value).map_err(|_| HpackError::IntegerOverflow);
            }
        }
        Err(HpackError::IntegerOverflow)
    }

    /// A string literal (§5.2): the raw octets of the block, or the Huffman-decoded ones in
    /// `scratch`.
    fn string<'s>(&mut self, scratch: &'s mut Vec<u8>) -> Result<&'s [u8], HpackError>
    where
        'a: 's,
    {
        let huffman = self.peek().is_some_and(|octet| octet & 0x80 != 0);
        let len = self.integer(7)?;
        let octets = self.take(len)?;
        if !huffman {
            return Ok(octets);
        }
        scratch.clear();
        huffman_decode(octets, scratch)?;
        Ok(scratch)
    }
}

/// One dynamic table entry: where its name and value lie in the table's arena.
struct Entry {
    /// Offset of the name, counted from the arena's first byte ever.
    start: usize,
    name_len: usize,
    value_len: usize,
}

impl Entry {
    fn size(&self) -> usize {
        self.name_len + self.value_len + ENTRY_OVERHEAD
    }
}

/// The dynamic table (§2.3.2), with the static table in front of it for lookups.
struct DynamicTable {
    /// Newest first, so that index 62 is `entries[0]`.
    entries: VecDeque<Entry>,
    /// The entries' names and values, oldest first, beginning with the byte at offset `base`:
    /// evicted ones are cut off in bulk, so that inserting allocates nothing once the arena
    /// has grown to its working size (peers insert a field or more with every request).
    arena: Vec<u8>,
    base: usize,
    /// Sum of the entries' sizes (§4.1).
    size: usize,
    max_size: usize,
}

impl DynamicTable {
    fn new(max_size: usize) -> DynamicTable {
        DynamicTable { entries: VecDeque::new(), arena: Vec::new(), base: 0, size: 0, max_size }
    }

    /// The field at a §2.3.3 index: 1 to 61 static, then dynamic newest first.
    fn field(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        let dynamic_index = match index.checked_sub(1) {
            None => return Err(HpackError::BadIndex),
            Some(static_index) => match STATIC_TABLE.get(static_index) {
                Some((name, value)) => return Ok((name.as_bytes(), value.as_bytes())),
                None => static_index - STATIC_TABLE.len(),
            },
        };
        let entry = self.entries.get(dynamic_index).ok_or(HpackError::BadIndex)?;
        let at = entry.start - self.base;
        let (name, value) = self.arena[at..at + entry.name_len + entry.value_len].split_at(entry.name_len);
        Ok((name, value))
    }

    /// Adds an entry, evicting the oldest to make room (§4.4); one larger than the whole table
    /// empties it and is not kept.
    fn insert(&mut self, name: &[u8], value: &[u8]) {
        let entry = Entry { start: 0, name_len: name.len(), value_len: value.len() };
        let entry_size = entry.size();
        if entry_size > self.max_size {
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max_size - entry_size);
        // What evicted entries left at the front goes once it outweighs a full table.
        let oldest = self.entries.back().map_or(self.base + self.arena.len(), |e| e.start);
        if oldest - self.base > TABLE_SIZE.max(self.max_size) {
            self.arena.drain(..oldest - self.base);
            self.base = oldest;
        }
        let start = self.base + self.arena.len();
        self.arena.extend_from_slice(name);
        self.arena.extend_from_slice(value);
        self.size += entry_size;
        self.entries.push_front(Entry { start, ..entry });
    }

    fn resize(&mut self, max_size: usize) {
        self.max_size = max_size;
        self.evict_to(max_size);
    }

    fn evict_to(&mut self, limit: usize) {
        while self.size > limit {
            let Some(oldest) = self.entries.pop_back() else { break };
            self.size -= oldest.size();
        }
    }
}

/// Appends `:status` (indexed when the static table has that exact status, else literal with the
/// indexed name).
pub(crate) fn encode_status(status: u16, dst: &mut Vec<u8>) {
    let index = match status {
        200 => 8,
        204 => 9,
        206 => 10,
        304 => 11,
        400 => 12,
        404 => 13,
        500 => 14,
        _ => {
            let digits = [status / 10000, status / 1000, status / 100, status / 10, status]
                .map(|n| b'0' + (n % 10) as u8);
            let leading_zeros = digits.iter().take(4).take_while(|&&digit| digit == b'0').count();
            encode_integer(8, 4, 0x00, dst);
            return encode_string(digits.get(leading_zeros..).unwrap_or_default(), dst);
        }
    };
    encode_integer(index, 7, 0x80, dst);
}

/// Appends one field: indexed when the static table has this exact name and value; otherwise a literal
/// "without indexing" (or "never indexed" when `sensitive`), with the static table's index for the name
/// when it has the name, and the value (and name) as raw octets, no Huffman — the encoder keeps no
/// dynamic table, so it never needs to send a table size update. Names must already be lowercase.
pub(crate) fn encode_field(name: &[u8], value: &[u8], sensitive: bool, dst: &mut Vec<u8>) {
    let name_index = static_name_index(name);
    if let Some(first) = name_index {
        let mut same_name =
            STATIC_TABLE.iter().enumerate().skip(first - 1).take_while(|(_, (n, _))| n.as_bytes() == name);
        if let Some((at, _)) = same_name.find(|(_, (_, v))| v.as_bytes() == value) {
            return encode_integer(at + 1, 7, 0x80, dst);
        }
    }
    let flags = if sensitive { 0x10 } else { 0x00 };
    match name_index {
        Some(index) => encode_integer(index, 4, flags, dst),
        None => {
            dst.push(flags);
            encode_string(name, dst);
        }
    }
    encode_string(value, dst);
}

/// The static table's first index for `name` (Appendix A), found without a scan.
fn static_name_index(name: &[u8]) -> Option<usize> {
    Some(match name {
        b":authority" => 1,
        b":method" => 2,
        b":path" => 4,
        b":scheme" => 6,
        b":status" => 8,
        b"accept-charset" => 15,
        b"accept-encoding" => 16,
        b"accept-language" => 17,
        b"accept-ranges" => 18,
        b"accept" => 19,
        b"access-control-allow-origin" => 20,
        b"age" => 21,
        b"allow" => 22,
        b"authorization" => 23,
        b"cache-control" => 24,
        b"content-disposition" => 25,
        b"content-encoding" => 26,
        b"content-language" => 27,
        b"content-length" => 28,
        b"content-location" => 29,
        b"content-range" => 30,
        b"content-type" => 31,
        b"cookie" => 32,
        b"date" => 33,
        b"etag" => 34,
        b"expect" => 35,
        b"expires" => 36,
        b"from" => 37,
        b"host" => 38,
        b"if-match" => 39,
        b"if-modified-since" => 40,
        b"if-none-match" => 41,
        b"if-range" => 42,
        b"if-unmodified-since" => 43,
        b"last-modified" => 44,
        b"link" => 45,
        b"location" => 46,
        b"max-forwards" => 47,
        b"proxy-authenticate" => 48,
        b"proxy-authorization" => 49,
        b"range" => 50,
        b"referer" => 51,
        b"refresh" => 52,
        b"retry-after" => 53,
        b"server" => 54,
        b"set-cookie" => 55,
        b"strict-transport-security" => 56,
        b"transfer-encoding" => 57,
        b"user-agent" => 58,
        b"vary" => 59,
        b"via" => 60,
        b"www-authenticate" => 61,
        _ => return None,
    })
}

/// §5.1: `value` in a `prefix_bits`-bit prefix after `flags`, then 7 bits per octet.
fn encode_integer(value: usize, prefix_bits: u32, flags: u8, dst: &mut Vec<u8>) {
    let prefix_max = (1u8 << prefix_bits) - 1;
    if value < usize::from(prefix_max) {
        dst.push(flags | value as u8);
        return;
    }
    dst.push(flags | prefix_max);
    let mut rest = value - usize::from(prefix_max);
    while rest >= 0x80 {
        dst.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    dst.push(rest as u8);
}

/// §5.2 with the H bit clear: the length, then the octets as they are.
fn encode_string(octets: &[u8], dst: &mut Vec<u8>) {
    encode_integer(octets.len(), 7, 0x00, dst);
    dst.extend_from_slice(octets);
}

/// Appends the Huffman-decoded `src` to `dst` (§5.2, Appendix B), four bits at a time.
fn huffman_decode(src: &[u8], dst: &mut Vec<u8>) -> Result<(), HpackError> {
    let mut state = 0u8;
    let mut accepting = true;
    for &octet in src {
        for nibble in [octet >> 4, octet & 0x0f] {
            let step = HUFFMAN_STEPS[usize::from(state)][usize::from(nibble)];
            if step.flags & STEP_FAILS != 0 {
                return Err(HpackError::Huffman);
            }
            if step.flags & STEP_EMITS != 0 {
                dst.push(step.symbol);
            }
            state = step.next;
            accepting = step.flags & STEP_ACCEPTS != 0;
        }
    }
    // Padding is the most significant bits of EOS: all ones, and shorter than an octet.
    if !accepting {
        return Err(HpackError::Huffman);
    }
    Ok(())
}

/// What four more bits do to the decoder: the tree node they lead to (an internal node of the
/// code's tree; 0 is the root), and the symbol they completed, if any (no code is shorter
/// than five bits, so four bits complete at most one).
#[derive(Clone, Copy)]
struct Step {
    next: u8,
    symbol: u8,
    flags: u8,
}

const STEP_EMITS: u8 = 1;
/// The bits decoded EOS, which a string must not hold.
const STEP_FAILS: u8 = 2;
/// The bits since the last symbol are all ones and fewer than eight: a valid end of a string.
const STEP_ACCEPTS: u8 = 4;

/// The code's 256 internal nodes, each with its 16 steps; built at compile time.
static HUFFMAN_STEPS: [[Step; 16]; 256] = huffman_steps();

/// A leaf in `huffman_tree`'s child table: the symbol, marked.
const LEAF: u16 = 0x8000;

/// The code's binary tree: each internal node's two children, internal nodes by index and
/// leaves as `LEAF | symbol`. The asserts make a table that is not a prefix code a build error.
const fn huffman_tree() -> [[u16; 2]; 256] {
    let mut children = [[0u16; 2]; 256];
    let mut nodes = 1;
    let mut symbol = 0;
    while symbol < HUFFMAN_CODES.len() {
        let (code, bits) = HUFFMAN_CODES[symbol];
        let mut node = 0;
        let mut bit = bits;
        while bit > 1 {
            bit -= 1;
            let b = ((code >> bit) & 1) as usize;
            if children[node][b] == 0 {
                children[node][b] = nodes as u16;
                nodes += 1;
            }
            assert!(children[node][b] & LEAF == 0, "a code is a prefix of another");
            node = children[node][b] as usize;
        }
        let b = (code & 1) as usize;
        assert!(children[node][b] == 0, "a code is a prefix of another");
        children[node][b] = LEAF | symbol as u16;
        symbol += 1;
    }
    assert!(nodes == 256, "not a complete code");
    children
}

const fn huffman_steps() -> [[Step; 16]; 256] {
    let children = huffman_tree();
    // The nodes reached from the root by one to seven ones, and the root: where a string may end.
    let mut accepting = [false; 256];
    accepting[0] = true;
    let mut node = 0;
    let mut depth = 0;
    while depth < 7 {
        node = children[node][1] as usize;
        accepting[node] = true;
        depth += 1;
    }
    let mut steps = [[Step { next: 0, symbol: 0, flags: 0 }; 16]; 256];
    let mut state = 0;
    while state < 256 {
        let mut nibble = 0;
        while nibble < 16 {
            let mut node = state;
            let mut step = Step { next: 0, symbol: 0, flags: 0 };
            let mut bit = 4;
            while bit > 0 {
                bit -= 1;
                let child = children[node][(nibble >> bit) & 1];
                if child & LEAF == 0 {
                    node = child as usize;
                } else if child & !LEAF == 256 {
                    step.flags |= STEP_FAILS;
                    node = 0;
                } else {
                    step.symbol = (child & !LEAF) as u8;
                    step.flags |= STEP_EMITS;
                    node = 0;
                }
            }
            step.next = node as u8;
            if accepting[node] && step.flags & STEP_FAILS == 0 {
                step.flags |= STEP_ACCEPTS;
            }
            steps[state][nibble] = step;
            nibble += 1;
        }
        state += 1;
    }
    steps
}

/// RFC 7541 Appendix A.
#[rustfmt::skip]
static STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""), (":method", "GET"), (":method", "POST"), (":path", "/"), (":path", "/index.html"),
    (":scheme", "http"), (":scheme", "https"), (":status", "200"), (":status", "204"), (":status", "206"),
    (":status", "304"), (":status", "400"), (":status", "404"), (":status", "500"), ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"), ("accept-language", ""), ("accept-ranges", ""), ("accept", ""),
    ("access-control-allow-origin", ""), ("age", ""), ("allow", ""), ("authorization", ""),
    ("cache-control", ""), ("content-disposition", ""), ("content-encoding", ""), ("content-language", ""),
    ("content-length", ""), ("content-location", ""), ("content-range", ""), ("content-type", ""),
    ("cookie", ""), ("date", ""), ("etag", ""), ("expect", ""), ("expires", ""), ("from", ""), ("host", ""),
    ("if-match", ""), ("if-modified-since", ""), ("if-none-match", ""), ("if-range", ""),
    ("if-unmodified-since", ""), ("last-modified", ""), ("link", ""), ("location", ""),
    ("max-forwards", ""), ("proxy-authenticate", ""), ("proxy-authorization", ""), ("range", ""),
    ("referer", ""), ("refresh", ""), ("retry-after", ""), ("server", ""), ("set-cookie", ""),
    ("strict-transport-security", ""), ("transfer-encoding", ""), ("user-agent", ""), ("vary", ""),
    ("via", ""), ("www-authenticate", ""),
];

/// RFC 7541 Appendix B: (code, bit length) for each symbol, the last EOS.
#[rustfmt::skip]
const HUFFMAN_CODES: [(u32, u8); 257] = [
    (0x1ff8, 13), (0x7fffd8, 23), (0xfffffe2, 28), (0xfffffe3, 28), (0xfffffe4, 28), (0xfffffe5, 28),
    (0xfffffe6, 28), (0xfffffe7, 28), (0xfffffe8, 28), (0xffffea, 24), (0x3ffffffc, 30), (0xfffffe9, 28),
    (0xfffffea, 28), (0x3ffffffd, 30), (0xfffffeb, 28), (0xfffffec, 28), (0xfffffed, 28), (0xfffffee, 28),
    (0xfffffef, 28), (0xffffff0, 28), (0xffffff1, 28), (0xffffff2, 28), (0x3ffffffe, 30), (0xffffff3, 28),
    (0xffffff4, 28), (0xffffff5, 28), (0xffffff6, 28), (0xffffff7, 28), (0xffffff8, 28), (0xffffff9, 28),
    (0xffffffa, 28), (0xffffffb, 28), (0x14, 6), (0x3f8, 10), (0x3f9, 10), (0xffa, 12),
    (0x1ff9, 13), (0x15, 6), (0xf8, 8), (0x7fa, 11), (0x3fa, 10), (0x3fb, 10),
    (0xf9, 8), (0x7fb, 11), (0xfa, 8), (0x16, 6), (0x17, 6), (0x18, 6),
    (0x0, 5), (0x1, 5), (0x2, 5), (0x19, 6), (0x1a, 6), (0x1b, 6),
    (0x1c, 6), (0x1d, 6), (0x1e, 6), (0x1f, 6), (0x5c, 7), (0xfb, 8),
    (0x7ffc, 15), (0x20, 6), (0xffb, 12), (0x3fc, 10), (0x1ffa, 13), (0x21, 6),
    (0x5d, 7), (0x5e, 7), (0x5f, 7), (0x60, 7), (0x61, 7), (0x62, 7),
    (0x63, 7), (0x64, 7), (0x65, 7), (0x66, 7), (0x67, 7), (0x68, 7),
    (0x69, 7), (0x6a, 7), (0x6b, 7), (0x6c, 7), (0x6d, 7), (0x6e, 7),
    (0x6f, 7), (0x70, 7), (0x71, 7), (0x72, 7), (0xfc, 8), (0x73, 7),
    (0xfd, 8), (0x1ffb, 13), (0x7fff0, 19), (0x1ffc, 13), (0x3ffc, 14), (0x22, 6),
    (0x7ffd, 15), (0x3, 5), (0x23, 6), (0x4, 5), (0x24, 6), (0x5, 5),
    (0x25, 6), (0x26, 6), (0x27, 6), (0x6, 5), (0x74, 7), (0x75, 7),
    (0x28, 6), (0x29, 6), (0x2a, 6), (0x7, 5), (0x2b, 6), (0x76, 7),
    (0x2c, 6), (0x8, 5), (0x9, 5), (0x2d, 6), (0x77, 7), (0x78, 7),
    (0x79, 7), (0x7a, 7), (0x7b, 7), (0x7ffe, 15), (0x7fc, 11), (0x3ffd, 14),
    (0x1ffd, 13), (0xffffffc, 28), (0xfffe6, 20), (0x3fffd2, 22), (0xfffe7, 20), (0xfffe8, 20),
    (0x3fffd3, 22), (0x3fffd4, 22), (0x3fffd5, 22), (0x7fffd9, 23), (0x3fffd6, 22), (0x7fffda, 23),
    (0x7fffdb, 23), (0x7fffdc, 23), (0x7fffdd, 23), (0x7fffde, 23), (0xffffeb, 24), (0x7fffdf, 23),
    (0xffffec, 24), (0xffffed, 24), (0x3fffd7, 22), (0x7fffe0, 23), (0xffffee, 24), (0x7fffe1, 23),
    (0x7fffe2, 23), (0x7fffe3, 23), (0x7fffe4, 23), (0x1fffdc, 21), (0x3fffd8, 22), (0x7fffe5, 23),
    (0x3fffd9, 22), (0x7fffe6, 23), (0x7fffe7, 23), (0xffffef, 24), (0x3fffda, 22), (0x1fffdd, 21),
    (0xfffe9, 20), (0x3fffdb, 22), (0x3fffdc, 22), (0x7fffe8, 23), (0x7fffe9, 23), (0x1fffde, 21),
    (0x7fffea, 23), (0x3fffdd, 22), (0x3fffde, 22), (0xfffff0, 24), (0x1fffdf, 21), (0x3fffdf, 22),
    (0x7fffeb, 23), (0x7fffec, 23), (0x1fffe0, 21), (0x1fffe1, 21), (0x3fffe0, 22), (0x1fffe2, 21),
    (0x7fffed, 23), (0x3fffe1, 22), (0x7fffee, 23), (0x7fffef, 23), (0xfffea, 20), (0x3fffe2, 22),
    (0x3fffe3, 22), (0x3fffe4, 22), (0x7ffff0, 23), (0x3fffe5, 22), (0x3fffe6, 22), (0x7ffff1, 23),
    (0x3ffffe0, 26), (0x3ffffe1, 26), (0xfffeb, 20), (0x7fff1, 19), (0x3fffe7, 22), (0x7ffff2, 23),
    (0x3fffe8, 22), (0x1ffffec, 25), (0x3ffffe2, 26), (0x3ffffe3, 26), (0x3ffffe4, 26), (0x7ffffde, 27),
    (0x7ffffdf, 27), (0x3ffffe5, 26), (0xfffff1, 24), (0x1ffffed, 25), (0x7fff2, 19), (0x1fffe3, 21),
    (0x3ffffe6, 26), (0x7ffffe0, 27), (0x7ffffe1, 27), (0x3ffffe7, 26), (0x7ffffe2, 27), (0xfffff2, 24),
    (0x1fffe4, 21), (0x1fffe5, 21), (0x3ffffe8, 26), (0x3ffffe9, 26), (0xffffffd, 28), (0x7ffffe3, 27),
    (0x7ffffe4, 27), (0x7ffffe5, 27), (0xfffec, 20), (0xfffff3, 24), (0xfffed, 20), (0x1fffe6, 21),
    (0x3fffe9, 22), (0x1fffe7, 21), (0x1fffe8, 21), (0x7ffff3, 23), (0x3fffea, 22), (0x3fffeb, 22),
    (0x1ffffee, 25), (0x1ffffef, 25), (0xfffff4, 24), (0xfffff5, 24), (0x3ffffea, 26), (0x7ffff4, 23),
    (0x3ffffeb, 26), (0x7ffffe6, 27), (0x3ffffec, 26), (0x3ffffed, 26), (0x7ffffe7, 27), (0x7ffffe8, 27),
    (0x7ffffe9, 27), (0x7ffffea, 27), (0x7ffffeb, 27), (0xffffffe, 28), (0x7ffffec, 27), (0x7ffffed, 27),
    (0x7ffffee, 27), (0x7ffffef, 27), (0x7fffff0, 27), (0x3ffffee, 26), (0x3fffffff, 30),
];

#[cfg(test)]
mod tests {
    use super::*;

    type Fields = Vec<(String, String)>;
    type Pairs<'a> = &'a [(&'a str, &'a str)];

    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    fn owned(pairs: Pairs<'_>) -> Fields {
        pairs.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect()
    }

    fn decode(decoder: &mut Decoder, block: &[u8]) -> Result<Fields, HpackError> {
        let mut fields = Vec::new();
        decoder.decode(block, |name, value| {
            fields.push((String::from_utf8_lossy(name).into(), String::from_utf8_lossy(value).into()))
        })?;
        Ok(fields)
    }

    /// Decodes `block_hex` and checks the fields, then the dynamic table newest first and its size.
    fn check(decoder: &mut Decoder, block_hex: &str, fields: Pairs<'_>, table: Pairs<'_>, size: usize) {
        assert_eq!(decode(decoder, &hex(block_hex)).unwrap(), owned(fields));
        let entries: Fields = (0..decoder.table.entries.len())
            .map(|i| decoder.table.field(62 + i).unwrap())
            .map(|(name, value)| {
                (String::from_utf8_lossy(name).into(), String::from_utf8_lossy(value).into())
            })
            .collect();
        assert_eq!(entries, owned(table));
        assert_eq!(decoder.table.size, size);
    }

    fn decode_error(block: &[u8]) -> HpackError {
        decode(&mut Decoder::new(), block).unwrap_err()
    }

    /// A deterministic xorshift generator: reproducible "random" inputs without a crate.
    struct Random(u64);
    impl Random {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, bound: usize) -> usize {
            (self.next() % bound as u64) as usize
        }
    }

    /// Only the tests Huffman-encode, to check the decoder against every symbol.
    fn huffman_encode(text: &[u8]) -> Vec<u8> {
        let (mut out, mut bits, mut pending) = (Vec::new(), 0u64, 0u32);
        for &octet in text {
            let (code, len) = HUFFMAN_CODES[usize::from(octet)];
            bits = bits << len | u64::from(code);
            pending += u32::from(len);
            while pending >= 8 {
                pending -= 8;
                out.push((bits >> pending) as u8);
            }
        }
        if pending > 0 {
            out.push((bits << (8 - pending)) as u8 | 0xff >> pending);
        }
        out
    }

    #[test]
    fn c2_literal_and_indexed_fields() {
        let mut decoder = Decoder::new();
        let custom = [("custom-key", "custom-header")];
        let block = "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572";
        check(&mut decoder, block, &custom, &custom, 55);
        let mut decoder = Decoder::new();
        check(&mut decoder, "040c 2f73 616d 706c 652f 7061 7468", &[(":path", "/sample/path")], &[], 0);
        check(&mut decoder, "1008 7061 7373 776f 7264 0673 6563 7265 74", &[("password", "secret")], &[], 0);
        check(&mut decoder, "82", &[(":method", "GET")], &[], 0);
    }

    fn check_requests(blocks: [&str; 3]) {
        let mut decoder = Decoder::new();
        let (get, http, root) = ((":method", "GET"), (":scheme", "http"), (":path", "/"));
        let authority = (":authority", "www.example.com");
        let cache_control = ("cache-control", "no-cache");
        let custom = ("custom-key", "custom-value");
        check(&mut decoder, blocks[0], &[get, http, root, authority], &[authority], 57);
        let request_2 = [get, http, root, authority, cache_control];
        check(&mut decoder, blocks[1], &request_2, &[cache_control, authority], 110);
        let request_3 = [get, (":scheme", "https"), (":path", "/index.html"), authority, custom];
        check(&mut decoder, blocks[2], &request_3, &[custom, cache_control, authority], 164);
    }

    const C3_REQUESTS: [&str; 3] = [
        "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        "8286 84be 5808 6e6f 2d63 6163 6865",
        "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
    ];
    const C4_REQUESTS: [&str; 3] = [
        "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
        "8286 84be 5886 a8eb 1064 9cbf",
        "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
    ];

    #[test]
    fn c3_requests_without_huffman() {
        check_requests(C3_REQUESTS);
    }

    #[test]
    fn c4_requests_with_huffman() {
        check_requests(C4_REQUESTS);
        assert_eq!(huffman_encode(b"www.example.com"), hex("f1e3 c2e5 f23a 6ba0 ab90 f4ff"));
        let every_symbol: Vec<u8> = (0..=255).chain((0..=255).rev()).collect();
        let mut decoded = Vec::new();
        huffman_decode(&huffman_encode(&every_symbol), &mut decoded).unwrap();
        assert_eq!(decoded, every_symbol);
    }

    fn check_responses(blocks: [&str; 3]) {
        let mut decoder = Decoder::with_table_size(256);
        let date_21 = ("date", "Mon, 21 Oct 2013 20:13:21 GMT");
        let location = ("location", "https://www.example.com");
        let private = ("cache-control", "private");
        let status_302 = [(":status", "302"), private, date_21, location];
        check(&mut decoder, blocks[0], &status_302, &[location, date_21, private, (":status", "302")], 222);
        let status_307 = [(":status", "307"), private, date_21, location];
        check(&mut decoder, blocks[1], &status_307, &[(":status", "307"), location, date_21, private], 222);
        let date_22 = ("date", "Mon, 21 Oct 2013 20:13:22 GMT");
        let cookie = ("set-cookie", "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1");
        let gzip = ("content-encoding", "gzip");
        let status_200 = [(":status", "200"), private, date_22, location, gzip, cookie];
        check(&mut decoder, blocks[2], &status_200, &[cookie, gzip, date_22], 215);
    }

    const C5_RESPONSES: [&str; 3] = [
        "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32
         3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        "4803 3330 37c1 c0bf",
        "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04 677a 6970
         7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49 553b 206d 6178 2d61
         6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31",
    ];
    const C6_RESPONSES: [&str; 3] = [
        "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad
         1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
        "4883 640e ffc1 c0bf",
        "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2
         e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
    ];

    #[test]
    fn c5_responses_without_huffman() {
        check_responses(C5_RESPONSES);
    }

    #[test]
    fn c6_responses_with_huffman() {
        check_responses(C6_RESPONSES);
    }

    #[test]
    fn bad_indices_are_rejected() {
        assert_eq!(decode_error(&[0x80]), HpackError::BadIndex);
        assert_eq!(decode_error(&[0xbe]), HpackError::BadIndex, "62 with an empty dynamic table");
        assert_eq!(decode_error(&[0x40 | 62, 0x00]), HpackError::BadIndex, "literal's name at 62");
    }

    #[test]
    fn bad_integers_are_rejected() {
        assert_eq!(decode_error(&[0xff]), HpackError::Truncated);
        assert_eq!(decode_error(&[0xff, 0x80]), HpackError::Truncated);
        assert_eq!(decode_error(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]), HpackError::IntegerOverflow, "> u32");
        let padded = [0xff, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00];
        assert_eq!(decode_error(&padded), HpackError::IntegerOverflow, "six continuation octets");
    }

    #[test]
    fn bad_strings_are_rejected() {
        assert_eq!(decode_error(&[0x00, 0x05, b'a']), HpackError::Truncated, "name past the block");
        assert_eq!(decode_error(&[0x00, 0x01, b'a', 0x01]), HpackError::Truncated, "value past the block");
        let with_value = |value: &[u8]| [&[0x00, 0x01, b'a', 0x80 | value.len() as u8][..], value].concat();
        assert_eq!(decode_error(&with_value(&[0xff; 4])), HpackError::Huffman, "EOS");
        assert_eq!(decode_error(&with_value(&[0x1f, 0xff])), HpackError::Huffman, "11 bits of padding");
        assert_eq!(decode_error(&with_value(&[0x18])), HpackError::Huffman, "\"a\" and zeros for padding");
        assert_eq!(decode(&mut Decoder::new(), &with_value(&[0x1f])).unwrap(), owned(&[("a", "a")]));
    }

    #[test]
    fn table_size_updates_only_at_the_start_and_within_the_limit() {
        let update = |size| {
            let mut block = Vec::new();
            encode_integer(size, 5, 0x20, &mut block);
            block
        };
        assert_eq!(decode_error(&update(TABLE_SIZE + 1)), HpackError::TableSizeUpdate);
        assert_eq!(decode_error(&[&[0x82][..], &update(0)].concat()), HpackError::TableSizeUpdate);
        let mut decoder = Decoder::new();
        decode(&mut decoder, &hex(C3_REQUESTS[0])).unwrap();
        let two_updates = [update(0), update(TABLE_SIZE), vec![0x82]].concat();
        assert_eq!(decode(&mut decoder, &two_updates).unwrap(), owned(&[(":method", "GET")]));
        assert_eq!(decoder.table.entries.len(), 0, "the update to 0 evicted the entry");
        assert_eq!(decode(&mut decoder, &[0xbe]), Err(HpackError::BadIndex));
        assert_eq!(decode(&mut decoder, &[0x82]), Err(HpackError::BadIndex), "stays failed");
    }

    #[test]
    fn an_entry_larger_than_the_table_empties_it() {
        let mut decoder = Decoder::with_table_size(64);
        check(&mut decoder, "4003 6b65 7901 76", &[("key", "v")], &[("key", "v")], 36);
        let long = format!("4003 6b65 791e {}", "61".repeat(30));
        check(&mut decoder, &long, &[("key", &"a".repeat(30))], &[], 0);
    }

    #[test]
    fn a_table_filled_many_times_over_keeps_its_newest_entries() {
        let mut decoder = Decoder::new();
        for i in 0..2000 {
            // Literal with incremental indexing, new name: a field a little over 60 bytes.
            let (name, value) =
                (format!("x-field-{}", i % 7), format!("value number {i} {}", "v".repeat(i % 40)));
            let mut block = vec![0x40];
            encode_string(name.as_bytes(), &mut block);
            encode_string(value.as_bytes(), &mut block);
            // And the previous field, by its dynamic index.
            if i > 0 {
                block.push(0x80 | 63);
            }
            let fields = decode(&mut decoder, &block).unwrap();
            assert_eq!(fields[0], (name.clone(), value.clone()));
            if i > 0 {
                let (previous_name, previous_value) = (
                    format!("x-field-{}", (i - 1) % 7),
                    format!("value number {} {}", i - 1, "v".repeat((i - 1) % 40)),
                );
                assert_eq!(fields[1], (previous_name, previous_value), "entry {i}");
            }
            assert!(decoder.table.size <= TABLE_SIZE);
            assert!(decoder.table.arena.len() <= 3 * TABLE_SIZE, "the arena is cut back");
        }
    }

    #[test]
    fn every_static_name_is_found_at_its_first_index() {
        for (at, (name, _)) in STATIC_TABLE.iter().enumerate() {
            let first = STATIC_TABLE.iter().position(|(n, _)| n == name).unwrap() + 1;
            assert_eq!(static_name_index(name.as_bytes()), Some(first), "{name} (index {})", at + 1);
        }
        assert_eq!(static_name_index(b"x-custom"), None);
    }

    #[test]
    fn status_encoding() {
        let mut block = Vec::new();
        encode_status(200, &mut block);
        assert_eq!(block, [0x88]);
        for status in [418, 0, 7, 65535] {
            block.clear();
            encode_status(status, &mut block);
            let status = status.to_string();
            assert_eq!(decode(&mut Decoder::new(), &block).unwrap(), owned(&[(":status", &status)]));
        }
    }

    #[test]
    fn field_encoding() {
        let mut block = Vec::new();
        encode_field(b":method", b"GET", false, &mut block);
        assert_eq!(block, [0x82]);
        block.clear();
        encode_field(b"content-type", b"application/grpc", false, &mut block);
        assert_eq!(block[0], 0x0f, "without indexing, name index 31");
        let grpc = [("content-type", "application/grpc")];
        assert_eq!(decode(&mut Decoder::new(), &block).unwrap(), owned(&grpc));
        block.clear();
        encode_field(b"authorization", b"Bearer x", true, &mut block);
        assert_eq!(block[..2], [0x1f, 23 - 15], "never indexed, name index 23");
        block.clear();
        encode_field(b"x-trellis-trace", b"1", true, &mut block);
        assert_eq!(block, [&[0x10, 15][..], b"x-trellis-trace", &[1, b'1']].concat());
        assert_eq!(decode(&mut Decoder::new(), &block).unwrap(), owned(&[("x-trellis-trace", "1")]));
    }

    #[test]
    fn random_fields_round_trip() {
        let mut random = Random(0x7e11_15ee_d5ee_d001);
        let (mut sent, mut block) = (Vec::new(), Vec::new());
        for _ in 0..400 {
            let name: Vec<u8> = match random.below(3) {
                0 => STATIC_TABLE[random.below(61)].0.into(),
                _ => (0..1 + random.below(40)).map(|_| b'a' + random.below(26) as u8).collect(),
            };
            let value: Vec<u8> = match random.below(3) {
                0 => STATIC_TABLE[random.below(61)].1.into(),
                _ => (0..random.below(300)).map(|_| random.next() as u8).collect(),
            };
            encode_field(&name, &value, random.below(2) == 0, &mut block);
            sent.push((name, value));
        }
        let mut received = Vec::new();
        Decoder::new().decode(&block, |name, value| received.push((name.to_vec(), value.to_vec()))).unwrap();
        assert_eq!(received, sent);
    }

    #[test]
    fn random_and_mutated_blocks_never_panic() {
        let mut random = Random(0x5eed_0fba_d0b1_0c42);
        for _ in 0..20_000 {
            let block: Vec<u8> = (0..random.below(48)).map(|_| random.next() as u8).collect();
            let _ = decode(&mut Decoder::new(), &block);
        }
        let blocks: Vec<Vec<u8>> = C4_REQUESTS.iter().chain(&C6_RESPONSES).map(|block| hex(block)).collect();
        for (which, original) in blocks.iter().enumerate() {
            for _ in 0..2_000 {
                let mut block = original.clone();
                for _ in 0..1 + random.below(3) {
                    let at = random.below(block.len());
                    block[at] ^= 1 << random.below(8);
                }
                block.truncate(block.len() - random.below(2) * random.below(block.len()));
                // Replay the earlier blocks of the same example so indices can land in the dynamic table.
                let first = which / 3 * 3;
                let mut decoder = Decoder::with_table_size(if first == 0 { TABLE_SIZE } else { 256 });
                for earlier in &blocks[first..which] {
                    decoder.decode(earlier, |_, _| {}).unwrap();
                }
                let _ = decoder.decode(&block, |_, _| {});
            }
        }
    }
}
