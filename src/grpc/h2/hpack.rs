//! HPACK (RFC 7541), shaped for a server that answers many small requests per connection.
//!
//! The [`Decoder`] keeps its dynamic table and its output in buffers it reuses, so decoding the
//! head of a request allocates nothing once a connection is warm: indexed fields are copies out
//! of the tables, and Huffman-coded strings that clients send again and again without indexing
//! (nghttp2 never indexes `:path` or `content-length`) come from a small cache instead of being
//! decoded each time. Huffman decoding itself is httlib-huffman's.
//!
//! The server's [`Encoder`] puts the fields every response repeats (`content-type`,
//! `grpc-status`) into the client's dynamic table once; after that, a response head is two
//! bytes and its trailers one, which is less for every client to parse (with h2load, the client
//! is what limits unary throughput here). Everything else goes out as a literal that the client
//! does not index. [`put_field`] is the stateless form, for our own clients, which open their
//! first block with [`TABLE_SIZE_ZERO`] so that the server never keeps a table for them.

use std::collections::VecDeque;

/// Every way a header block can be malformed; all of them are a connection error
/// COMPRESSION_ERROR (RFC 9113 §4.3), the variants only say which rule broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    #[error("header block ends inside a field")]
    Truncated,
    #[error("integer too large")]
    IntegerOverflow,
    #[error("index {0} is neither in the static nor in the dynamic table")]
    BadIndex(usize),
    #[error("invalid Huffman code or padding")]
    Huffman,
    #[error("dynamic table size update above the limit or after a field")]
    BadSizeUpdate,
}

/// Entries in the static table (RFC 7541 Appendix A).
pub const STATIC_TABLE_LEN: usize = 61;
/// The dynamic table's indexes follow the static table's (RFC 7541 §2.3.3).
const FIRST_DYNAMIC_INDEX: usize = STATIC_TABLE_LEN + 1;

/// RFC 7541 Appendix A; index `i` is `STATIC_TABLE[i - 1]`.
pub const STATIC_TABLE: [(&[u8], &[u8]); STATIC_TABLE_LEN] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// What each entry costs on top of its name and value lengths (RFC 7541 §4.1).
const ENTRY_OVERHEAD_BYTES: usize = 32;

/// How a representation's first byte starts (RFC 7541 §5.1, §6): (its pattern, the bits above
/// the integer's prefix; the size of that prefix in bits).
type Representation = (u8, u32);
/// Indexed field, pattern 1 (RFC 7541 §6.1).
const INDEXED: Representation = (0x80, 7);
/// Dynamic table size update, pattern 001 (RFC 7541 §6.3).
const SIZE_UPDATE: Representation = (0x20, 5);
/// Literal with incremental indexing, pattern 01 (RFC 7541 §6.2.1): the decoder adds the
/// field to its table.
const WITH_INDEXING: Representation = (0x40, 6);
/// Literal without indexing, pattern 0000 (RFC 7541 §6.2.2): the decoder's table is left
/// alone. Never indexed (0001, RFC 7541 §6.2.3) has the same prefix.
const WITHOUT_INDEXING: Representation = (0x00, 4);
/// A string literal's H bit: the string is Huffman-coded (RFC 7541 §5.2).
const HUFFMAN_BIT: u8 = 0x80;
/// A raw string literal: the H bit clear, then the length with a 7-bit prefix (RFC 7541 §5.2).
const RAW_STRING: Representation = (0x00, 7);
/// An integer's continuation byte: this bit says another byte follows (RFC 7541 §5.1).
const INTEGER_CONTINUATION_BIT: u8 = 0x80;
/// An integer's continuation byte: the value bits under the continuation bit (RFC 7541 §5.1).
const INTEGER_VALUE_MASK: u8 = !INTEGER_CONTINUATION_BIT;
/// Value bits per continuation byte (RFC 7541 §5.1).
const INTEGER_BITS_PER_BYTE: u32 = 7;
/// Continuation bytes an integer may have: four reach 2^28, far above any size this server
/// accepts (RFC 7541 §5.1 leaves the limit to the implementation).
const MAX_INTEGER_CONTINUATION_BYTES: u32 = 4;
/// The shift of an integer's last allowed continuation byte (RFC 7541 §5.1).
const MAX_INTEGER_SHIFT_BITS: u32 = (MAX_INTEGER_CONTINUATION_BYTES - 1) * INTEGER_BITS_PER_BYTE;
/// Huffman padding: at most 7 bits, the most significant bits of EOS (RFC 7541 §5.2).
const MAX_HUFFMAN_PADDING_BITS: usize = 7;
/// Bits in one byte of a Huffman-coded string (RFC 7541 §5.2).
const BYTE_BITS: usize = u8::BITS as usize;
/// ASCII DEL: it and every byte above it are invalid in a field name (RFC 9113 §8.2.1).
const ASCII_DEL: u8 = 0x7f;

/// The bits of a representation's first byte that hold its pattern (RFC 7541 §6).
const fn pattern_mask((_, prefix_bits): Representation) -> u8 {
    !(u8::MAX >> (u8::BITS - prefix_bits))
}

/// A decoded header list: names and values packed in one buffer, in the order they came.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HeaderList {
    bytes: Vec<u8>,
    /// Per field, where its name and its value end in `bytes` (it starts where the previous
    /// field's value ended), and whether its bytes are known to pass [`field_error`] (it came
    /// from a table entry, checked once when the entry was made).
    ends: Vec<(usize, usize, bool)>,
}

/// By hand for `clone_from`, which keeps the destination's buffers (the derived one
/// allocates anew): a repeated header block is copied into a reused list.
impl Clone for HeaderList {
    fn clone(&self) -> Self {
        HeaderList {
            bytes: self.bytes.clone(),
            ends: self.ends.clone(),
        }
    }

    fn clone_from(&mut self, source: &Self) {
        self.bytes.clone_from(&source.bytes);
        self.ends.clone_from(&source.ends);
    }
}

impl HeaderList {
    /// Empties the list, keeping its buffers for the next block.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        self.push_checked(name, value, false);
    }

    /// [`HeaderList::push`] for a field whose bytes are known to pass [`field_error`]
    /// (`checked`), or not known.
    fn push_checked(&mut self, name: &[u8], value: &[u8], checked: bool) {
        debug_assert!(!checked || field_error(name, value).is_none());
        self.bytes.extend_from_slice(name);
        let name_end = self.bytes.len();
        self.bytes.extend_from_slice(value);
        self.ends.push((name_end, self.bytes.len(), checked));
    }

    /// The fields in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.iter_checked().map(|(name, value, _)| (name, value))
    }

    /// The fields in order, each with whether its bytes are known to pass [`field_error`]:
    /// a request's checks skip those (a client repeating its headers sends table indexes,
    /// and scanning their bytes was a measurable part of a unary call's instructions:
    /// docs/PERFORMANCE.md).
    pub fn iter_checked(&self) -> impl Iterator<Item = (&[u8], &[u8], bool)> + '_ {
        let mut start = 0;
        self.ends
            .iter()
            .map(move |&(name_end, value_end, checked)| {
                let field = (
                    &self.bytes[start..name_end],
                    &self.bytes[name_end..value_end],
                    checked,
                );
                start = value_end;
                field
            })
    }

    /// The first value of `name`.
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

/// Why a field's bytes may not appear in a request (RFC 9113 §8.2.1), if they may not: a name
/// (after a leading `:`) that is empty or has an upper-case, space, control, `:` or non-ASCII
/// byte; a value with NUL, CR or LF, or starting or ending with a space or tab.
pub fn field_error(name: &[u8], value: &[u8]) -> Option<&'static str> {
    let bare = name.strip_prefix(b":").unwrap_or(name);
    if bare.is_empty()
        || bare
            .iter()
            .any(|&b| b <= b' ' || b == b':' || b.is_ascii_uppercase() || b >= ASCII_DEL)
    {
        return Some("header name empty, upper-case, or with a space, control or non-ASCII byte");
    }
    if value.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n')
        || value.first().is_some_and(|&b| b == b' ' || b == b'\t')
        || value.last().is_some_and(|&b| b == b' ' || b == b'\t')
    {
        return Some("header value with NUL, CR or LF, or surrounded by whitespace");
    }
    None
}

/// One dynamic table entry: name then value in one buffer, and whether its bytes pass
/// [`field_error`] (checked once, when it is added).
struct Entry {
    bytes: Vec<u8>,
    name_len: usize,
    well_formed: bool,
}

impl Entry {
    fn name(&self) -> &[u8] {
        &self.bytes[..self.name_len]
    }

    fn value(&self) -> &[u8] {
        &self.bytes[self.name_len..]
    }

    fn size(&self) -> usize {
        self.bytes.len() + ENTRY_OVERHEAD_BYTES
    }
}

/// Huffman-coded strings seen lately, with what they decode to.
#[derive(Default)]
struct HuffmanCache {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
    next: usize,
}

impl HuffmanCache {
    /// Strings remembered: a client's few unindexed values (`:path`, `content-length`, ...).
    const ENTRIES: usize = 16;
    /// Longer strings are decoded every time: they are rarely repeated verbatim.
    const MAX_ENCODED_BYTES: usize = 96;

    /// Appends the decoding of `encoded` to `dst`.
    fn decode(&mut self, encoded: &[u8], dst: &mut Vec<u8>) -> Result<(), HpackError> {
        if encoded.len() > Self::MAX_ENCODED_BYTES {
            return huffman_decode(encoded, dst);
        }
        if let Some((_, decoded)) = self.entries.iter().find(|(e, _)| e == encoded) {
            dst.extend_from_slice(decoded);
            return Ok(());
        }
        let start = dst.len();
        huffman_decode(encoded, dst)?;
        if self.entries.len() < Self::ENTRIES {
            self.entries.push((encoded.to_vec(), dst[start..].to_vec()));
        } else {
            // Round-robin replacement; the slot's buffers are reused.
            let (e, d) = &mut self.entries[self.next];
            e.clear();
            e.extend_from_slice(encoded);
            d.clear();
            d.extend_from_slice(&dst[start..]);
            self.next = (self.next + 1) % Self::ENTRIES;
        }
        Ok(())
    }
}

fn huffman_decode(encoded: &[u8], dst: &mut Vec<u8>) -> Result<(), HpackError> {
    use httlib_huffman::encoder::table::ENCODE_TABLE;
    let start = dst.len();
    httlib_huffman::decode(encoded, dst, httlib_huffman::DecoderSpeed::FourBits)
        .map_err(|_| HpackError::Huffman)?;
    // httlib-huffman lets zero bits pass as padding; RFC 7541 §5.2 allows at most 7 bits,
    // all ones (the start of EOS).
    let bits: usize = dst[start..]
        .iter()
        .map(|&b| usize::from(ENCODE_TABLE[usize::from(b)].0))
        .sum();
    let padding = (encoded.len() * BYTE_BITS)
        .checked_sub(bits)
        .ok_or(HpackError::Huffman)?;
    let ones = (1u16 << padding.min(BYTE_BITS)) - 1;
    match encoded.last() {
        _ if padding > MAX_HUFFMAN_PADDING_BITS => Err(HpackError::Huffman),
        Some(&last) if u16::from(last) & ones != ones => Err(HpackError::Huffman),
        _ => Ok(()),
    }
}

/// The decoding side of one connection's HPACK context.
pub struct Decoder {
    /// Newest entry first: dynamic index 62 is `table[0]`.
    table: VecDeque<Entry>,
    size: usize,
    max_size: usize,
    /// SETTINGS_HEADER_TABLE_SIZE as we announced it: size updates may not exceed it.
    limit: usize,
    /// The buffer of the entry evicted last, reused by the next insertion.
    spare: Vec<u8>,
    /// The field being decoded: name then value.
    field: Vec<u8>,
    huffman: HuffmanCache,
    /// Counts the changes to the table (insertions, size updates): a repeat is only valid
    /// while this is where it was when the repeat was recorded.
    changes: u64,
    repeat: Repeat,
}

/// The last header block that decoded without changing the table, and what it decoded to.
/// Clients repeat a request's headers as the same table indexes, byte for byte, and the
/// same bytes read against the same table give the same list: a repeat is answered with a
/// copy of that list instead of a decode (it was a fifth of a unary call's instructions).
#[derive(Default)]
struct Repeat {
    block: Vec<u8>,
    list: HeaderList,
    list_size: usize,
    max_list_size: usize,
    /// `Decoder::changes` when the block was decoded; `None` until one was.
    changes: Option<u64>,
}

/// What [`Decoder::decode`] found besides the fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// The header list's size (RFC 9113 §6.5.2), stored fields or not.
    pub list_size: usize,
    /// The block was the same as the last one that left the table unchanged, and the table
    /// has not changed since: the list is the same as that block's, and so is anything the
    /// caller worked out from it.
    pub repeat: bool,
}

impl Decoder {
    /// A decoder for a connection that announced `limit` as its SETTINGS_HEADER_TABLE_SIZE.
    pub fn new(limit: usize) -> Decoder {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max_size: limit,
            limit,
            spare: Vec::new(),
            field: Vec::new(),
            huffman: HuffmanCache::default(),
            changes: 0,
            repeat: Repeat::default(),
        }
    }

    /// Decodes one complete header block into `out` (emptied first) and returns the header
    /// list's size (RFC 9113 §6.5.2). Fields stop being stored once that size passes
    /// `max_list_size`, but the whole block is still decoded so that the dynamic table stays
    /// in step with the client's: the caller compares the size and refuses the request.
    pub fn decode(
        &mut self,
        block: &[u8],
        out: &mut HeaderList,
        max_list_size: usize,
    ) -> Result<Decoded, HpackError> {
        let repeat = &self.repeat;
        if repeat.changes == Some(self.changes)
            && repeat.max_list_size == max_list_size
            && repeat.block == block
        {
            out.clone_from(&repeat.list);
            return Ok(Decoded {
                list_size: repeat.list_size,
                repeat: true,
            });
        }
        let changes = self.changes;
        let list_size = self.decode_fields(block, out, max_list_size)?;
        if self.changes == changes {
            let repeat = &mut self.repeat;
            repeat.block.clear();
            repeat.block.extend_from_slice(block);
            repeat.list.clone_from(out);
            repeat.list_size = list_size;
            repeat.max_list_size = max_list_size;
            repeat.changes = Some(changes);
        }
        Ok(Decoded {
            list_size,
            repeat: false,
        })
    }

    /// [`Decoder::decode`] without the repeat: reads every field of the block.
    fn decode_fields(
        &mut self,
        mut block: &[u8],
        out: &mut HeaderList,
        max_list_size: usize,
    ) -> Result<usize, HpackError> {
        out.clear();
        let mut list_size = 0usize;
        let mut fields_seen = false;
        while let Some(&first) = block.first() {
            if first & const { pattern_mask(INDEXED) } == INDEXED.0 {
                // Indexed field (RFC 7541 §6.1).
                let index = integer(&mut block, INDEXED.1)?;
                let (name, value, well_formed) = lookup(&self.table, index)?;
                list_size += name.len() + value.len() + ENTRY_OVERHEAD_BYTES;
                if list_size <= max_list_size {
                    out.push_checked(name, value, well_formed);
                }
                fields_seen = true;
                continue;
            }
            if first & const { pattern_mask(SIZE_UPDATE) } == SIZE_UPDATE.0 {
                // Dynamic table size update (RFC 7541 §6.3): only before the block's first field.
                let size = integer(&mut block, SIZE_UPDATE.1)?;
                if fields_seen || size > self.limit {
                    return Err(HpackError::BadSizeUpdate);
                }
                self.max_size = size;
                self.evict_to(size);
                // The table fits its new size, which is within what we announced (RFC 7541 §4.3).
                debug_assert!(self.size <= self.max_size && self.max_size <= self.limit);
                self.changes += 1;
                continue;
            }
            // A literal (RFC 7541 §6.2): with incremental indexing (01), or without / never
            // indexed.
            let (indexing, prefix) =
                if first & const { pattern_mask(WITH_INDEXING) } == WITH_INDEXING.0 {
                    (true, WITH_INDEXING.1)
                } else {
                    (false, WITHOUT_INDEXING.1)
                };
            let name_index = integer(&mut block, prefix)?;
            self.field.clear();
            if name_index == 0 {
                self.string(&mut block)?;
            } else {
                let (name, _, _) = lookup(&self.table, name_index)?;
                self.field.extend_from_slice(name);
            }
            let name_len = self.field.len();
            self.string(&mut block)?;
            let (name, value) = self.field.split_at(name_len);
            list_size += name.len() + value.len() + ENTRY_OVERHEAD_BYTES;
            if list_size <= max_list_size {
                out.push(name, value);
            }
            if indexing {
                self.insert(name_len);
            }
            fields_seen = true;
        }
        Ok(list_size)
    }

    /// Appends a string literal (RFC 7541 §5.2) to `self.field`.
    fn string(&mut self, block: &mut &[u8]) -> Result<(), HpackError> {
        let huffman = block.first().ok_or(HpackError::Truncated)? & HUFFMAN_BIT != 0;
        let len = integer(block, RAW_STRING.1)?;
        if len > block.len() {
            return Err(HpackError::Truncated);
        }
        let (bytes, rest) = block.split_at(len);
        *block = rest;
        if huffman {
            self.huffman.decode(bytes, &mut self.field)
        } else {
            self.field.extend_from_slice(bytes);
            Ok(())
        }
    }

    /// Adds `self.field` (name of `name_len` bytes, then value) as the newest entry
    /// (RFC 7541 §4.4).
    fn insert(&mut self, name_len: usize) {
        self.changes += 1;
        let size = self.field.len() + ENTRY_OVERHEAD_BYTES;
        if size > self.max_size {
            // Larger than the whole table: the table ends up empty.
            self.evict_to(0);
            return;
        }
        self.evict_to(self.max_size - size);
        let mut bytes = std::mem::take(&mut self.spare);
        bytes.clear();
        bytes.extend_from_slice(&self.field);
        let (name, value) = self.field.split_at(name_len);
        let well_formed = field_error(name, value).is_none();
        self.table.push_front(Entry {
            bytes,
            name_len,
            well_formed,
        });
        self.size += size;
        // RFC 7541 §4.4: the table never holds more than its maximum size.
        debug_assert!(self.size <= self.max_size && self.max_size <= self.limit);
    }

    fn evict_to(&mut self, size: usize) {
        while self.size > size {
            let old = self.table.pop_back().expect("size counts the entries");
            self.size -= old.size();
            self.spare = old.bytes;
        }
        debug_assert_eq!(self.table.is_empty(), self.size == 0);
    }
}

/// The (name, value) at an HPACK index, static entries first, then the dynamic table; and
/// whether its bytes pass [`field_error`] (every static entry does: a test checks it).
fn lookup(table: &VecDeque<Entry>, index: usize) -> Result<(&[u8], &[u8], bool), HpackError> {
    match index {
        1..=STATIC_TABLE_LEN => {
            let (name, value) = STATIC_TABLE[index - 1];
            Ok((name, value, true))
        }
        _ => table
            .get(index.wrapping_sub(FIRST_DYNAMIC_INDEX))
            .map(|e| (e.name(), e.value(), e.well_formed))
            .ok_or(HpackError::BadIndex(index)),
    }
}

/// Reads an integer with an N-bit prefix (RFC 7541 §5.1) from the front of `block`.
fn integer(block: &mut &[u8], prefix_bits: u32) -> Result<usize, HpackError> {
    let (&first, rest) = block.split_first().ok_or(HpackError::Truncated)?;
    *block = rest;
    let max_prefix = (1usize << prefix_bits) - 1;
    let mut value = usize::from(first) & max_prefix;
    if value < max_prefix {
        return Ok(value);
    }
    let mut shift = 0;
    loop {
        let (&byte, rest) = block.split_first().ok_or(HpackError::Truncated)?;
        *block = rest;
        if shift > MAX_INTEGER_SHIFT_BITS {
            return Err(HpackError::IntegerOverflow);
        }
        value += usize::from(byte & INTEGER_VALUE_MASK) << shift;
        shift += INTEGER_BITS_PER_BYTE;
        if byte & INTEGER_CONTINUATION_BIT == 0 {
            return Ok(value);
        }
    }
}

/// Writes an integer with an N-bit prefix; `flags` are the bits above the prefix.
fn put_integer(out: &mut Vec<u8>, flags: u8, prefix_bits: u32, mut value: usize) {
    let max_prefix = (1usize << prefix_bits) - 1;
    if value < max_prefix {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max_prefix as u8);
    value -= max_prefix;
    while value >= usize::from(INTEGER_CONTINUATION_BIT) {
        out.push((value as u8 & INTEGER_VALUE_MASK) | INTEGER_CONTINUATION_BIT);
        value >>= INTEGER_BITS_PER_BYTE;
    }
    out.push(value as u8);
}

/// A dynamic table size update to 0 (RFC 7541 §6.3): the first byte of the first header block one
/// of our clients sends, since [`put_field`] never adds to the server's table.
pub const TABLE_SIZE_ZERO: u8 = SIZE_UPDATE.0;

/// Where the static table has a field: the whole field, or only its name (the first entry
/// with it), as 1-based indices.
fn static_lookup(name: &[u8], value: &[u8]) -> (Option<usize>, usize) {
    let mut name_index = 0;
    // No static entry starts like gRPC's own and custom metadata names: no scan for them.
    if name.starts_with(b"grpc-") || name.starts_with(b"x-") {
        return (None, 0);
    }
    for (i, (n, v)) in STATIC_TABLE.iter().enumerate() {
        if *n == name {
            if *v == value {
                return (Some(i + 1), name_index);
            }
            if name_index == 0 {
                name_index = i + 1;
            }
        }
    }
    (None, name_index)
}

/// Writes a literal field (RFC 7541 §6.2): `flags` and `prefix_bits` choose the representation, and
/// `name_index` a table entry's name (0: the name follows as a string).
fn put_literal(
    out: &mut Vec<u8>,
    (flags, prefix_bits): (u8, u32),
    name_index: usize,
    name: &[u8],
    value: &[u8],
) {
    put_integer(out, flags, prefix_bits, name_index);
    if name_index == 0 {
        put_integer(out, RAW_STRING.0, RAW_STRING.1, name.len());
        out.extend_from_slice(name);
    }
    put_integer(out, RAW_STRING.0, RAW_STRING.1, value.len());
    out.extend_from_slice(value);
}

/// Appends one field: an indexed field when the static table holds it whole, otherwise a
/// literal without indexing (RFC 7541 §6.2.2), naming a static entry's name where there is one.
/// Strings go out raw: response heads are short, and Huffman would cost more CPU than the
/// bytes it saves on loopback and LAN links. It neither reads nor changes the dynamic table,
/// so a block of these fields may be sent in any order relative to other blocks.
pub fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    match static_lookup(name, value) {
        (Some(index), _) => put_integer(out, INDEXED.0, INDEXED.1, index),
        (None, name_index) => put_literal(out, WITHOUT_INDEXING, name_index, name, value),
    }
}

/// Names whose fields the [`Encoder`] adds to the client's table: each response repeats them
/// with one of a few values. Others (`grpc-message`, metadata) vary and are never indexed.
const INDEXED_NAMES: [&[u8]; 2] = [b"content-type", b"grpc-status"];

/// The dynamic table size both ends start with (RFC 9113 §6.5.2, SETTINGS_HEADER_TABLE_SIZE),
/// and the most the [`Encoder`] uses even if a client allows more: its fields fit many times.
pub const DEFAULT_TABLE_BYTES: usize = 4096;

/// The encoding side of one connection's HPACK context: a mirror of the client's dynamic
/// table, changed only by the blocks it encodes. Blocks must reach the client in the order
/// they were encoded, so a connection encodes each block when it puts it in its output.
pub struct Encoder {
    /// Newest entry first, as in the client's decoder: dynamic index 62 is `table[0]`.
    table: VecDeque<(Vec<u8>, Vec<u8>)>,
    /// Sum of the entries' sizes (RFC 7541 §4.1).
    size: usize,
    /// The table size in force for the client, after any update owed.
    max_size: usize,
    /// Size updates the next block must open with (RFC 7541 §4.2): the smallest limit the client
    /// set since the last block, then its latest.
    owed: Option<(usize, usize)>,
    /// Counts the changes to the table (insertions, evictions, limits): a remembered block
    /// holds only while this is where it was when the block was made.
    changes: u64,
    /// Blocks that left the table unchanged, by their fields, replaced in turn.
    recent: Vec<RecentBlock>,
    next_recent: usize,
}

/// A block the [`Encoder`] made without changing its table. A connection answers call after
/// call with the same head and trailers, and while the table is unchanged the same fields
/// encode to the same bytes: a copy of them spares the table scans (half of a unary answer's
/// instructions went to encoding its three fields).
struct RecentBlock {
    fields: Vec<(Vec<u8>, Vec<u8>)>,
    block: Vec<u8>,
    changes: u64,
}

impl RecentBlock {
    /// Blocks remembered per connection: a response head, its trailers, and room for the
    /// heads and trailers of a few other outcomes.
    const ENTRIES: usize = 4;
    /// Blocks of fields larger than this (error messages, metadata) are not remembered:
    /// they rarely repeat, and would push out the ones that do.
    const MAX_FIELD_BYTES: usize = 128;

    fn is(&self, fields: &[(&[u8], &[u8])]) -> bool {
        self.fields.len() == fields.len()
            && self
                .fields
                .iter()
                .zip(fields)
                .all(|((n, v), (name, value))| n == name && v == value)
    }
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder {
            table: VecDeque::new(),
            size: 0,
            max_size: DEFAULT_TABLE_BYTES,
            owed: None,
            changes: 0,
            recent: Vec::new(),
            next_recent: 0,
        }
    }
}

impl Encoder {
    /// The client set SETTINGS_HEADER_TABLE_SIZE to `limit`: the table shrinks now (as the
    /// client's will when it reads the update) and the next block tells the client.
    pub fn set_limit(&mut self, limit: usize) {
        let limit = limit.min(DEFAULT_TABLE_BYTES);
        if self.owed.is_none() && limit == self.max_size {
            return;
        }
        let smallest = self.owed.map_or(limit, |(s, _)| s.min(limit));
        self.owed = Some((smallest, limit));
        self.evict_to(smallest);
        self.max_size = limit;
        // Within the client's limit now, and the next block tells it (RFC 7541 §4.2).
        assert!(self.size <= smallest && self.max_size <= DEFAULT_TABLE_BYTES);
        self.changes += 1;
    }

    /// Encodes one header block into `out` (appended).
    pub fn encode(&mut self, fields: &[(&[u8], &[u8])], out: &mut Vec<u8>) {
        if let Some((smallest, last)) = self.owed.take() {
            if smallest < last {
                put_integer(out, SIZE_UPDATE.0, SIZE_UPDATE.1, smallest);
            }
            put_integer(out, SIZE_UPDATE.0, SIZE_UPDATE.1, last);
        }
        // What is remembered are the fields' bytes alone, after any size update.
        let changes = self.changes;
        let recent = self
            .recent
            .iter()
            .find(|r| r.changes == changes && r.is(fields));
        if let Some(recent) = recent {
            return out.extend_from_slice(&recent.block);
        }
        let start = out.len();
        for &(name, value) in fields {
            self.field(out, name, value);
        }
        let field_bytes: usize = fields.iter().map(|(n, v)| n.len() + v.len()).sum();
        if self.changes == changes && field_bytes <= RecentBlock::MAX_FIELD_BYTES {
            self.remember(fields, &out[start..]);
        }
    }

    /// Keeps `block` as the encoding of `fields` while the table stays as it is.
    fn remember(&mut self, fields: &[(&[u8], &[u8])], block: &[u8]) {
        let entry = if self.recent.len() < RecentBlock::ENTRIES {
            self.recent.push(RecentBlock {
                fields: Vec::new(),
                block: Vec::new(),
                changes: 0,
            });
            self.recent.last_mut().expect("just pushed")
        } else {
            // In turn; the entry's buffers are reused.
            let entry = &mut self.recent[self.next_recent];
            self.next_recent = (self.next_recent + 1) % RecentBlock::ENTRIES;
            entry
        };
        entry.fields.clear();
        entry
            .fields
            .extend(fields.iter().map(|(n, v)| (n.to_vec(), v.to_vec())));
        entry.block.clear();
        entry.block.extend_from_slice(block);
        entry.changes = self.changes;
    }

    fn field(&mut self, out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        // The few fields this encoder indexes are what every response repeats: look for them
        // first, which spares those the static table's scan.
        let indexed = self.table.iter().position(|(n, v)| n == name && v == value);
        if let Some(position) = indexed {
            return put_integer(out, INDEXED.0, INDEXED.1, FIRST_DYNAMIC_INDEX + position);
        }
        let (whole, name_index) = static_lookup(name, value);
        if let Some(index) = whole {
            return put_integer(out, INDEXED.0, INDEXED.1, index);
        }
        let size = ENTRY_OVERHEAD_BYTES + name.len() + value.len();
        if INDEXED_NAMES.contains(&name) && size <= self.max_size {
            put_literal(out, WITH_INDEXING, name_index, name, value);
            self.evict_to(self.max_size - size);
            self.table.push_front((name.to_vec(), value.to_vec()));
            self.size += size;
            self.changes += 1;
        } else {
            put_literal(out, WITHOUT_INDEXING, name_index, name, value);
        }
        debug_assert!(self.size <= self.max_size, "the table outgrew the client's");
    }

    /// Drops the oldest entries until the table holds at most `size` bytes (RFC 7541 §4.4).
    fn evict_to(&mut self, size: usize) {
        while self.size > size {
            let (name, value) = self
                .table
                .pop_back()
                .expect("a table with a size has entries");
            self.size -= ENTRY_OVERHEAD_BYTES + name.len() + value.len();
        }
        debug_assert_eq!(self.table.is_empty(), self.size == 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn every_static_entry_encodes_as_its_index_and_its_name_as_the_first_index() {
        for (i, (name, value)) in STATIC_TABLE.iter().enumerate() {
            let first = 1 + STATIC_TABLE.iter().position(|(n, _)| n == name).unwrap();
            let mut out = Vec::new();
            put_field(&mut out, name, value);
            // Indexed field: the first entry equal to both (the table repeats no pair).
            let mut expected = Vec::new();
            put_integer(&mut expected, 0x80, 7, i + 1);
            assert_eq!(out, expected, "{name:?}: {value:?}");
            out.clear();
            put_field(&mut out, name, b"not-in-the-table");
            expected.clear();
            put_integer(&mut expected, 0x00, 4, first);
            assert_eq!(out[..expected.len()], expected[..], "{name:?}");
        }
    }

    #[test]
    fn static_entries_pass_the_request_field_rules() {
        // `lookup` marks every static entry as checked.
        for (name, value) in STATIC_TABLE {
            assert_eq!(field_error(name, value), None, "{name:?}: {value:?}");
        }
    }

    #[test]
    fn table_entries_remember_whether_their_bytes_passed() {
        let mut encoder = loona_hpack::Encoder::new();
        let mut decoder = Decoder::new(4096);
        let mut out = HeaderList::default();
        let fields: [(&[u8], &[u8]); 3] = [(b"x-ok", b"v"), (b"x-Bad", b"v"), (b":path", b"/")];
        // First as literals (then indexed), then by index: only the good entry is checked.
        for round in 0..2 {
            let block = encoder.encode(fields.iter().copied());
            decoder.decode(&block, &mut out, usize::MAX).unwrap();
            let checked: Vec<bool> = out.iter_checked().map(|(_, _, c)| c).collect();
            let expected = if round == 0 {
                [false, false, true] // literals, and :path / from the static table
            } else {
                [true, false, true]
            };
            assert_eq!(checked, expected, "round {round}");
        }
    }

    fn fields(list: &HeaderList) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| {
                (
                    String::from_utf8(n.to_vec()).unwrap(),
                    String::from_utf8(v.to_vec()).unwrap(),
                )
            })
            .collect()
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// RFC 7541 C.3 (raw strings) and C.4 (the same requests Huffman-coded): three requests on
    /// one connection, the dynamic table carrying `:authority` and `cache-control` across.
    #[test]
    fn rfc7541_request_examples() {
        let expected = [
            (
                pairs(&[
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":path", "/"),
                    (":authority", "www.example.com"),
                ]),
                57,
            ),
            (
                pairs(&[
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":path", "/"),
                    (":authority", "www.example.com"),
                    ("cache-control", "no-cache"),
                ]),
                110,
            ),
            (
                pairs(&[
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":path", "/index.html"),
                    (":authority", "www.example.com"),
                    ("custom-key", "custom-value"),
                ]),
                164,
            ),
        ];
        let raw = [
            "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "8286 84be 5808 6e6f 2d63 6163 6865",
            "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        ];
        let huffman = [
            "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
            "8286 84be 5886 a8eb 1064 9cbf",
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ];
        for blocks in [raw, huffman] {
            let mut decoder = Decoder::new(4096);
            let mut out = HeaderList::default();
            for (block, (want, table_size)) in blocks.iter().zip(&expected) {
                decoder.decode(&hex(block), &mut out, 1 << 20).unwrap();
                assert_eq!(&fields(&out), want);
                assert_eq!(decoder.size, *table_size);
            }
        }
    }

    /// RFC 7541 C.5.1-C.5.3's first response, with a 256-byte table: entries are evicted
    /// oldest first and the table never exceeds its size.
    #[test]
    fn eviction_keeps_the_table_within_its_size() {
        let mut decoder = Decoder::new(256);
        let mut out = HeaderList::default();
        let block = hex(
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
             2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
             6c65 2e63 6f6d",
        );
        decoder.decode(&block, &mut out, 1 << 20).unwrap();
        assert_eq!(decoder.size, 222);
        let block = hex("4803 3330 37c1 c0bf");
        decoder.decode(&block, &mut out, 1 << 20).unwrap();
        assert_eq!(
            fields(&out),
            pairs(&[
                (":status", "307"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com"),
            ])
        );
        assert_eq!(decoder.size, 222);
        assert!(decoder.size <= decoder.max_size);
    }

    #[test]
    fn malformed_blocks_are_refused() {
        let cases: [(&str, HpackError); 7] = [
            ("80", HpackError::BadIndex(0)),
            ("be", HpackError::BadIndex(62)),
            ("ff ff ff", HpackError::Truncated),
            ("ff 80 80 80 80 80 01", HpackError::IntegerOverflow),
            ("00 05 61", HpackError::Truncated),
            ("3f e2 1f", HpackError::BadSizeUpdate), // 4097 > 4096
            ("82 20", HpackError::BadSizeUpdate),    // after a field
        ];
        for (block, want) in cases {
            let mut out = HeaderList::default();
            let got = Decoder::new(4096).decode(&hex(block), &mut out, 1 << 20);
            assert_eq!(got, Err(want), "block {block}");
        }
        // Huffman strings padded with zero bits instead of the EOS prefix, or with more than
        // seven bits; the same with valid padding decodes.
        for block in ["00 81 00 81 00", "00 81 1c 81 1f", "00 82 1f ff 81 1f"] {
            let mut out = HeaderList::default();
            let got = Decoder::new(4096).decode(&hex(block), &mut out, 1 << 20);
            assert_eq!(got, Err(HpackError::Huffman), "block {block}");
        }
        let mut out = HeaderList::default();
        Decoder::new(4096)
            .decode(&hex("00 81 1f 81 1f"), &mut out, 1 << 20)
            .unwrap();
        assert_eq!(out.get(b"a"), Some(&b"a"[..]));
    }

    /// One byte can name a 4 KiB table entry: the list size, not the block size, is what
    /// bounds the output, and the table keeps in step past the limit.
    #[test]
    fn oversized_lists_are_measured_not_stored() {
        let mut decoder = Decoder::new(4096);
        let mut out = HeaderList::default();
        let mut block = hex("40 01 78"); // literal with indexing, new name "x"
        put_integer(&mut block, 0, 7, 3000);
        block.extend(std::iter::repeat_n(b'y', 3000));
        let size = decoder
            .decode(&block, &mut out, 16 << 10)
            .unwrap()
            .list_size;
        assert_eq!(size, 3033);
        let amplified = vec![0xbe; 100]; // 100 references to that entry
        let size = decoder
            .decode(&amplified, &mut out, 16 << 10)
            .unwrap()
            .list_size;
        assert_eq!(size, 303_300);
        assert!(out.len() <= 5, "stored {} fields", out.len());
        decoder.decode(&hex("be"), &mut out, 16 << 10).unwrap();
        assert_eq!(out.get(b"x").map(<[u8]>::len), Some(3000));
    }

    #[test]
    fn no_static_name_starts_like_grpc_or_custom_metadata() {
        for (name, _) in STATIC_TABLE {
            assert!(!name.starts_with(b"grpc-") && !name.starts_with(b"x-"));
        }
    }

    #[test]
    fn encoder_output_decodes_back() {
        let mut block = vec![TABLE_SIZE_ZERO];
        let sent: [(&[u8], &[u8]); 5] = [
            (b":status", b"200"),
            (b"content-type", b"application/grpc"),
            (b"grpc-status", b"3"),
            (b"grpc-message", &[b'm'; 300]),
            (b":status", b"415"),
        ];
        for (n, v) in sent {
            put_field(&mut block, n, v);
        }
        assert_eq!(block[1], 0x88, ":status 200 is static index 8");
        let mut decoder = loona_hpack::Decoder::new();
        let got = decoder.decode(&block).unwrap();
        let want: Vec<(Vec<u8>, Vec<u8>)> =
            sent.iter().map(|(n, v)| (n.to_vec(), v.to_vec())).collect();
        assert_eq!(got, want);
        let mut ours = HeaderList::default();
        Decoder::new(4096)
            .decode(&block, &mut ours, 1 << 20)
            .unwrap();
        assert_eq!(ours.iter().count(), 5);
        assert!(ours
            .iter()
            .zip(&want)
            .all(|((n, v), (wn, wv))| n == wn && v == wv));
    }

    fn header_lists() -> impl Strategy<Value = Vec<Vec<(Vec<u8>, Vec<u8>)>>> {
        let name = prop_oneof![
            Just(b":path".to_vec()),
            Just(b"content-type".to_vec()),
            Just(b"grpc-timeout".to_vec()),
            proptest::collection::vec(b'a'..=b'z', 1..12),
        ];
        let value = proptest::collection::vec(any::<u8>(), 0..300);
        let field = (name, value);
        proptest::collection::vec(proptest::collection::vec(field, 0..12), 1..8)
    }

    /// Decodes with the independent decoder, as (name, value) pairs.
    fn reference_decode(
        decoder: &mut loona_hpack::Decoder,
        block: &[u8],
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        decoder
            .decode(block)
            .expect("the reference decoder accepts the block")
    }

    #[test]
    fn the_encoder_indexes_the_fields_every_response_repeats_once() {
        let mut encoder = Encoder::default();
        let mut client = loona_hpack::Decoder::new();
        let head: [(&[u8], &[u8]); 2] =
            [(b":status", b"200"), (b"content-type", b"application/grpc")];
        let ok: [(&[u8], &[u8]); 1] = [(b"grpc-status", b"0")];
        let mut sizes = Vec::new();
        for _ in 0..3 {
            for fields in [&head[..], &ok[..]] {
                let mut block = Vec::new();
                encoder.encode(fields, &mut block);
                let sent: Vec<_> = fields
                    .iter()
                    .map(|(n, v)| (n.to_vec(), v.to_vec()))
                    .collect();
                assert_eq!(reference_decode(&mut client, &block), sent);
                sizes.push(block.len());
            }
        }
        // First time: literals with indexing; afterwards :status 200 (static) plus one
        // dynamic index for the head, and one byte for the trailers.
        assert_eq!(sizes, [19, 15, 2, 1, 2, 1]);
        let mut block = Vec::new();
        encoder.encode(&[(&b"grpc-status"[..], &b"0"[..])], &mut block);
        assert_eq!(block, [0x80 | 62], "the newest entry is index 62");
    }

    #[test]
    fn the_encoder_never_indexes_messages_or_metadata() {
        let mut encoder = Encoder::default();
        for _ in 0..2 {
            let mut block = Vec::new();
            let message: [(&[u8], &[u8]); 2] = [(b"grpc-message", b"bad topic"), (b"x-a", b"b")];
            encoder.encode(&message, &mut block);
            assert_eq!(block[0] & 0xf0, 0x00, "literal without indexing");
            assert!(encoder.table.is_empty());
        }
    }

    #[test]
    fn a_limit_raised_above_the_default_and_lowered_back_owes_no_update() {
        // The encoder never uses more than the default size, so 65,536 then 4,096 changes
        // nothing it uses (a case the property test below once found).
        let mut encoder = Encoder::default();
        encoder.set_limit(65_536);
        encoder.set_limit(DEFAULT_TABLE_BYTES);
        let mut block = Vec::new();
        encoder.encode(&[(&b":status"[..], &b"200"[..])], &mut block);
        assert_eq!(block, [0x88], "no size update, just the field");
    }

    /// Size updates are owed once: the block after one that opened with them has its fields
    /// alone (replaying 0 then 4,096 would empty the client's table behind the encoder's back).
    #[test]
    fn size_updates_are_not_part_of_a_reused_block() {
        let mut encoder = Encoder::default();
        let status: [(&[u8], &[u8]); 1] = [(b":status", b"200")];
        encoder.set_limit(0);
        encoder.set_limit(DEFAULT_TABLE_BYTES);
        let mut first = Vec::new();
        encoder.encode(&status, &mut first);
        assert_eq!(first[0] & 0xe0, 0x20, "opens with the owed size updates");
        let mut again = Vec::new();
        encoder.encode(&status, &mut again);
        assert_eq!(again, [0x88], "the updates are not sent twice");
    }

    #[test]
    fn a_smaller_table_limit_is_signalled_and_applied_before_the_next_field() {
        let mut encoder = Encoder::default();
        let ok: [(&[u8], &[u8]); 1] = [(b"grpc-status", b"0")];
        let mut block = Vec::new();
        encoder.encode(&ok, &mut block);
        // 0, then back up to 100 between two blocks: both updates, smallest first (RFC 7541 §4.2).
        encoder.set_limit(0);
        encoder.set_limit(100);
        block.clear();
        encoder.encode(&ok, &mut block);
        assert_eq!(
            block[..3],
            [0x20, 0x3f, 100 - 31],
            "update to 0, then to 100"
        );
        assert_eq!(
            block[3], 0x40,
            "indexed again: the update to 0 emptied the table"
        );
        // A limit no entry fits: nothing is indexed, and the table stays empty.
        encoder.set_limit(40);
        block.clear();
        encoder.encode(&ok, &mut block);
        assert_eq!(block[..2], [0x3f, 40 - 31]);
        assert_eq!(block[2] & 0xf0, 0x00, "literal without indexing");
        assert!(encoder.table.is_empty());
        // The same limit again owes nothing.
        encoder.set_limit(40);
        block.clear();
        encoder.encode(&ok, &mut block);
        assert_eq!(block[0] & 0xf0, 0x00);
    }

    /// The same bytes mean other fields once the table has changed (index 62 is always the
    /// newest entry): a repeat holds only while the table is as it was.
    #[test]
    fn a_block_is_a_repeat_only_while_the_table_is_unchanged() {
        let mut decoder = Decoder::new(4096);
        let mut out = HeaderList::default();
        let mut decode = |block: &str, max: usize| {
            let decoded = decoder.decode(&hex(block), &mut out, max);
            decoded.map(|d| {
                (
                    d.repeat,
                    out.get(b"x-a").or(out.get(b"x-b")).map(<[u8]>::to_vec),
                )
            })
        };
        let newest = "be";
        assert_eq!(
            decode("40 03 78 2d 61 01 31", 1 << 20),
            Ok((false, Some(b"1".to_vec())))
        );
        assert_eq!(decode(newest, 1 << 20), Ok((false, Some(b"1".to_vec()))));
        assert_eq!(decode(newest, 1 << 20), Ok((true, Some(b"1".to_vec()))));
        assert_eq!(
            decode(newest, 1 << 10),
            Ok((false, Some(b"1".to_vec()))),
            "other limit"
        );
        // An insertion shifts the indexes: the same byte now names the new entry.
        assert_eq!(
            decode("40 03 78 2d 62 01 32", 1 << 10),
            Ok((false, Some(b"2".to_vec())))
        );
        assert_eq!(decode(newest, 1 << 10), Ok((false, Some(b"2".to_vec()))));
        assert_eq!(decode(newest, 1 << 10), Ok((true, Some(b"2".to_vec()))));
        // A size update to 0 empties the table: the byte names nothing any more.
        assert_eq!(decode("20", 1 << 10), Ok((false, None)));
        assert_eq!(decode(newest, 1 << 10), Err(HpackError::BadIndex(62)));
    }

    proptest! {
        #![proptest_config(crate::proptest_config())]
        /// Clients repeat a few header lists; an indexing encoder turns them into repeated
        /// blocks, and blocks whose bytes repeat after the table changed. Whatever the order,
        /// every block decodes to what the independent decoder reads, repeat or not.
        #[test]
        fn repeated_blocks_decode_as_the_independent_decoder_reads_them(
            picks in proptest::collection::vec((0usize..4, 0usize..4), 1..60),
        ) {
            let pool: [&[(&[u8], &[u8])]; 4] = [
                &[(b":method", b"POST"), (b":path", b"/a"), (b"te", b"trailers")],
                &[(b":method", b"POST"), (b":path", b"/b")],
                &[(b"x-n", b"1")],
                &[(b"x-n", b"2"), (b":path", b"/a")],
            ];
            let mut encoder = loona_hpack::Encoder::new();
            let mut reference = loona_hpack::Decoder::new();
            let mut decoder = Decoder::new(4096);
            let mut out = HeaderList::default();
            let mut sent: Vec<Vec<u8>> = Vec::new();
            for (pick, back) in picks {
                // Sometimes an earlier block's bytes again, whatever the table now holds.
                let block = if (1..=sent.len()).contains(&back) {
                    sent[sent.len() - back].clone()
                } else {
                    encoder.encode(pool[pick].iter().copied())
                };
                let want = reference.decode(&block);
                let got = decoder.decode(&block, &mut out, 1 << 20);
                match want {
                    Ok(want) => {
                        prop_assert!(got.is_ok());
                        prop_assert!(out.iter().eq(want.iter().map(|(n, v)| (&n[..], &v[..]))));
                    }
                    Err(_) => {
                        // Both refuse the block; what each left in its table is not compared.
                        prop_assert!(got.is_err());
                        break;
                    }
                }
                sent.push(block);
            }
        }

        /// Blocks from an independent encoder (loona-hpack, which indexes everything and so
        /// fills and churns the dynamic table) decode to what was encoded, block after block.
        #[test]
        fn independent_encoder_round_trips(lists in header_lists()) {
            let mut encoder = loona_hpack::Encoder::new();
            let mut decoder = Decoder::new(4096);
            let mut out = HeaderList::default();
            for list in &lists {
                let block = encoder.encode(list.iter().map(|(n, v)| (&n[..], &v[..])));
                decoder.decode(&block, &mut out, 1 << 20).unwrap();
                prop_assert!(out.iter().eq(list.iter().map(|(n, v)| (&n[..], &v[..]))));
                prop_assert!(decoder.size <= decoder.max_size);
            }
        }

        /// Whatever fields go out and whatever table limits the client sets in between, the
        /// independent decoder reads back exactly what was encoded, and every lowered limit is
        /// signalled at the start of the next block.
        #[test]
        fn encoded_blocks_decode_in_step_with_the_client(steps in proptest::collection::vec(
            prop_oneof![
                proptest::collection::vec(0usize..8, 1..6).prop_map(Ok),
                prop_oneof![Just(0usize), Just(44), Just(60), Just(100), Just(200), Just(4096), Just(65_536)].prop_map(Err),
            ], 1..40)) {
            let pool: [(&[u8], &[u8]); 8] = [
                (b":status", b"200"),
                (b":status", b"415"),
                (b"content-type", b"application/grpc"),
                (b"content-type", b"application/grpc+proto"),
                (b"grpc-status", b"0"),
                (b"grpc-status", b"13"),
                (b"grpc-message", b"no"),
                (b"x-custom", b"v"),
            ];
            let mut encoder = Encoder::default();
            let mut client = loona_hpack::Decoder::new();
            let mut lowered_to: Option<usize> = None;
            let mut announced = DEFAULT_TABLE_BYTES;
            for step in steps {
                match step {
                    Err(limit) => {
                        // The encoder never uses more than the default size: only a limit
                        // below what it uses is a reduction it must signal.
                        if limit < announced.min(DEFAULT_TABLE_BYTES) {
                            lowered_to = Some(lowered_to.map_or(limit, |l: usize| l.min(limit)));
                        }
                        announced = limit;
                        client.set_max_allowed_table_size(limit);
                        encoder.set_limit(limit);
                    }
                    Ok(picks) => {
                        let fields: Vec<(&[u8], &[u8])> = picks.iter().map(|&i| pool[i]).collect();
                        let mut block = Vec::new();
                        encoder.encode(&fields, &mut block);
                        if let Some(limit) = lowered_to.take() {
                            let mut rest = &block[..];
                            prop_assert_eq!(rest[0] & 0xe0, 0x20, "a size update first");
                            prop_assert!(integer(&mut rest, 5).unwrap() <= limit);
                        }
                        let sent: Vec<_> = fields.iter().map(|(n, v)| (n.to_vec(), v.to_vec())).collect();
                        prop_assert_eq!(reference_decode(&mut client, &block), sent);
                        prop_assert!(encoder.size <= encoder.max_size.min(announced));
                    }
                }
            }
        }

        /// Huffman strings, cached or not, decode like the reference decoder does.
        #[test]
        fn huffman_strings_decode(values in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..200), 1..40)) {
            let mut decoder = Decoder::new(4096);
            let mut out = HeaderList::default();
            for value in values.iter().chain(values.iter()) {
                let mut encoded = Vec::new();
                httlib_huffman::encode(value, &mut encoded).unwrap();
                let mut block = vec![0x00, 0x01, b'v'];
                put_integer(&mut block, 0x80, 7, encoded.len());
                block.extend_from_slice(&encoded);
                decoder.decode(&block, &mut out, 1 << 20).unwrap();
                prop_assert_eq!(out.get(b"v"), Some(&value[..]));
            }
        }

        /// Garbage never panics and never grows the table past its size.
        #[test]
        fn garbage_is_refused_or_decoded(blocks in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..64), 1..8)) {
            let mut decoder = Decoder::new(4096);
            let mut out = HeaderList::default();
            for block in &blocks {
                let _ = decoder.decode(block, &mut out, 16 << 10);
                prop_assert!(decoder.size <= decoder.max_size);
            }
        }
    }
}
