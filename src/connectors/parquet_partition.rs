//! Parquet partition files of a CDM folder: one file per partition, columns typed from the
//! entity schema — STRING utf8, INT64 int64, DOUBLE double, BOOL boolean, TIMESTAMP timestamp
//! (UTC, µs), DATE date32, JSON utf8 (JSON text) — every column optional except `_deleted`.
//!
//! Written through parquet's column API (no Arrow): each value is converted to its column's
//! type as its row arrives and buffered per column until a row group is full (by rows or by
//! bytes, so memory stays bounded whatever the entity); then each column is written in turn.
//!
//! Reference followed: the Apache Parquet format specification (logical types `STRING`,
//! `DATE`, `TIMESTAMP(isAdjustedToUTC=true, MICROS)`, `JSON`) and the `parquet` crate's
//! `SerializedFileWriter`.

use std::io::{self, Write};
use std::sync::Arc;

use parquet::basic::{Compression, LogicalType, Repetition, TimeUnit, Type as PhysicalType, ZstdLevel};
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, Int32Type, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::{ColumnPath, Type};
use serde_json::Value;

use super::cdm::CdmType;

/// Rows per row group at most. Values are converted to their column's Parquet type as they
/// arrive and buffered per column (no copy of the row), so a row group's memory is about its
/// encoded size: 32 Ki rows keep a run's peak RSS under 200 MB also while an upload waits on a
/// slow link (64 Ki rows reached 204–211 MiB there, benches/storage.rs), and row groups stay
/// large enough for readers to scan well.
const ROW_GROUP_ROWS: usize = 32 * 1024;
/// Values of the first row group looked at per column to tell whether dictionary encoding pays.
const DICTIONARY_SAMPLE: usize = 4096;
/// Buffered bytes per row group at most (wide rows end groups sooner).
const ROW_GROUP_BYTES: usize = 16 << 20;

/// How Parquet pages are compressed (the export's `compression` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParquetCompression {
    None,
    Snappy,
    Zstd,
}

impl ParquetCompression {
    fn codec(self) -> Compression {
        match self {
            ParquetCompression::None => Compression::UNCOMPRESSED,
            ParquetCompression::Snappy => Compression::SNAPPY,
            ParquetCompression::Zstd => Compression::ZSTD(ZstdLevel::default()),
        }
    }
}

/// One column: its name and CDM type; `None` for the boolean `_deleted` column.
pub struct ParquetColumn {
    pub name: String,
    pub data_type: Option<CdmType>,
}

pub struct ParquetPartition<W: Write + Send> {
    /// Made when the first row group is written, once its values tell which columns are worth
    /// a dictionary; until then the output waits in `pending`.
    writer: Option<SerializedFileWriter<W>>,
    pending: Option<Pending<W>>,
    /// The row group being filled, column by column.
    columns: Vec<ColumnBuffer>,
    rows: usize,
    buffered_bytes: usize,
}

/// What the file writer is made of.
struct Pending<W> {
    out: W,
    schema: Arc<Type>,
    names: Vec<String>,
    compression: ParquetCompression,
}

/// One column's values of the row group being filled, already in their Parquet type, with the
/// definition levels (0 = null) of optional columns.
struct ColumnBuffer {
    ty: Option<CdmType>,
    levels: Vec<i16>,
    values: Values,
}

enum Values {
    Bool(Vec<bool>),
    Bytes(Vec<ByteArray>),
    Int64(Vec<i64>),
    Int32(Vec<i32>),
    Double(Vec<f64>),
}

impl ColumnBuffer {
    fn new(ty: Option<CdmType>) -> ColumnBuffer {
        let values = match ty {
            None | Some(CdmType::Boolean) => Values::Bool(Vec::new()),
            Some(CdmType::String | CdmType::Json) => Values::Bytes(Vec::new()),
            Some(CdmType::Int64 | CdmType::DateTimeOffset) => Values::Int64(Vec::new()),
            Some(CdmType::Date) => Values::Int32(Vec::new()),
            Some(CdmType::Double) => Values::Double(Vec::new()),
        };
        ColumnBuffer {
            ty,
            levels: Vec::new(),
            values,
        }
    }

    /// Adds one value; returns the bytes it holds.
    fn push(&mut self, value: &Value) -> Result<usize, String> {
        let Some(ty) = self.ty else {
            // `_deleted`: required, false when absent.
            if let Values::Bool(data) = &mut self.values {
                data.push(value.as_bool().unwrap_or(false));
            }
            return Ok(1);
        };
        if value.is_null() {
            self.levels.push(0);
            return Ok(2);
        }
        let bytes = match (&mut self.values, ty) {
            (Values::Bytes(data), CdmType::Json) => {
                let text = serde_json::to_vec(value).unwrap_or_default();
                let len = text.len();
                data.push(ByteArray::from(text));
                len + 24
            }
            (Values::Bytes(data), _) => {
                let text = text_of(value).into_bytes();
                let len = text.len();
                data.push(ByteArray::from(text));
                len + 24
            }
            (Values::Int64(data), CdmType::DateTimeOffset) => {
                data.push(micros_of(value)?);
                8
            }
            (Values::Int64(data), _) => {
                data.push(int64_of(value)?);
                8
            }
            (Values::Int32(data), _) => {
                data.push(days_of(value)?);
                4
            }
            (Values::Double(data), _) => {
                data.push(value.as_f64().ok_or_else(|| format!("{value} is not a number"))?);
                8
            }
            (Values::Bool(data), _) => {
                data.push(value.as_bool().ok_or_else(|| format!("{value} is not a boolean"))?);
                1
            }
        };
        self.levels.push(1);
        Ok(bytes + 2)
    }

    /// Whether dictionary encoding pays for this column: its first values repeat. Columns of
    /// (nearly) unique values — keys, emails, timestamps — would fill a dictionary only for
    /// the writer to fall back to plain encoding, hashing every value on the way.
    fn worth_a_dictionary(&self) -> bool {
        fn repeats<T: std::hash::Hash + Eq>(values: impl Iterator<Item = T>) -> bool {
            let mut seen = std::collections::HashSet::new();
            let mut count = 0usize;
            for value in values.take(DICTIONARY_SAMPLE) {
                seen.insert(value);
                count += 1;
            }
            seen.len() * 2 <= count
        }
        match &self.values {
            Values::Bool(_) => true,
            Values::Bytes(data) => repeats(data.iter().map(ByteArray::data)),
            Values::Int64(data) => repeats(data.iter()),
            Values::Int32(data) => repeats(data.iter()),
            Values::Double(data) => repeats(data.iter().map(|d| d.to_bits())),
        }
    }

    /// Takes back the last value pushed (of a row refused in a later column).
    fn pop(&mut self) {
        let present = match self.ty {
            None => true,
            Some(_) => self.levels.pop() == Some(1),
        };
        if present {
            match &mut self.values {
                Values::Bool(data) => drop(data.pop()),
                Values::Bytes(data) => drop(data.pop()),
                Values::Int64(data) => drop(data.pop()),
                Values::Int32(data) => drop(data.pop()),
                Values::Double(data) => drop(data.pop()),
            }
        }
    }

    /// Writes the buffered values as the row group's column and empties the buffer.
    fn write(&mut self, column: &mut parquet::file::writer::SerializedColumnWriter<'_>) -> Result<(), String> {
        let levels = std::mem::take(&mut self.levels);
        let levels = self.ty.map(|_| levels.as_slice());
        let result = match &mut self.values {
            Values::Bool(data) => column
                .typed::<BoolType>()
                .write_batch(&std::mem::take(data), levels, None),
            Values::Bytes(data) => column
                .typed::<ByteArrayType>()
                .write_batch(&std::mem::take(data), levels, None),
            Values::Int64(data) => column
                .typed::<Int64Type>()
                .write_batch(&std::mem::take(data), levels, None),
            Values::Int32(data) => column
                .typed::<Int32Type>()
                .write_batch(&std::mem::take(data), levels, None),
            Values::Double(data) => column
                .typed::<DoubleType>()
                .write_batch(&std::mem::take(data), levels, None),
        };
        result.map(|_| ()).map_err(|e| e.to_string())
    }
}

impl<W: Write + Send> ParquetPartition<W> {
    pub fn new(out: W, columns: &[ParquetColumn], compression: ParquetCompression) -> io::Result<Self> {
        let fields = columns
            .iter()
            .map(|c| column_type(&c.name, c.data_type).map(Arc::new))
            .collect::<parquet::errors::Result<Vec<_>>>()
            .map_err(parquet_error)?;
        let schema = Type::group_type_builder("schema")
            .with_fields(fields)
            .build()
            .map_err(parquet_error)?;
        Ok(ParquetPartition {
            writer: None,
            pending: Some(Pending {
                out,
                schema: Arc::new(schema),
                names: columns.iter().map(|c| c.name.clone()).collect(),
                compression,
            }),
            columns: columns.iter().map(|c| ColumnBuffer::new(c.data_type)).collect(),
            rows: 0,
            buffered_bytes: 0,
        })
    }

    /// Buffers one row (values in column order, a missing one is null); writes a row group
    /// when it is full. A row with a value that does not fit its column's type is refused whole:
    /// the partition stays as it was before it.
    pub fn write_row(&mut self, row: &[Value]) -> io::Result<()> {
        for index in 0..self.columns.len() {
            let value = row.get(index).unwrap_or(&Value::Null);
            match self.columns[index].push(value) {
                Ok(bytes) => self.buffered_bytes += bytes,
                Err(message) => {
                    self.columns[..index].iter_mut().for_each(ColumnBuffer::pop);
                    return Err(column_error(index, message));
                }
            }
        }
        self.rows += 1;
        if self.rows >= ROW_GROUP_ROWS || self.buffered_bytes >= ROW_GROUP_BYTES {
            self.flush_row_group()?;
        }
        Ok(())
    }

    /// Writes the last row group and the footer; gives back the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.flush_row_group()?;
        self.file_writer()?;
        let writer = self.writer.take().expect("made above");
        writer.into_inner().map_err(parquet_error)
    }

    /// The output, e.g. to count what reached it.
    pub fn output(&self) -> &W {
        match (&self.writer, &self.pending) {
            (Some(writer), _) => writer.inner(),
            (None, Some(pending)) => &pending.out,
            (None, None) => unreachable!("a partition has a writer or what makes one"),
        }
    }

    pub fn output_mut(&mut self) -> &mut W {
        match (&mut self.writer, &mut self.pending) {
            (Some(writer), _) => writer.inner_mut(),
            (None, Some(pending)) => &mut pending.out,
            (None, None) => unreachable!("a partition has a writer or what makes one"),
        }
    }

    /// The file writer, made on first use: dictionary encoding only for the columns whose
    /// buffered values repeat.
    fn file_writer(&mut self) -> io::Result<&mut SerializedFileWriter<W>> {
        if let Some(pending) = self.pending.take() {
            let mut properties = WriterProperties::builder()
                .set_compression(pending.compression.codec())
                .set_created_by(format!("exportd {}", env!("CARGO_PKG_VERSION")));
            for (name, column) in pending.names.iter().zip(&self.columns) {
                if !column.worth_a_dictionary() {
                    properties = properties.set_column_dictionary_enabled(ColumnPath::from(name.as_str()), false);
                }
            }
            let writer = SerializedFileWriter::new(pending.out, pending.schema, Arc::new(properties.build()))
                .map_err(parquet_error)?;
            self.writer = Some(writer);
        }
        self.writer
            .as_mut()
            .ok_or_else(|| io::Error::other("the Parquet writer failed earlier"))
    }

    fn flush_row_group(&mut self) -> io::Result<()> {
        if self.rows == 0 {
            return Ok(());
        }
        self.rows = 0;
        self.buffered_bytes = 0;
        self.file_writer()?;
        let writer = self.writer.as_mut().expect("made above");
        let mut group = writer.next_row_group().map_err(parquet_error)?;
        let mut index = 0;
        while let Some(mut column) = group.next_column().map_err(parquet_error)? {
            self.columns[index]
                .write(&mut column)
                .map_err(|e| column_error(index, e))?;
            column.close().map_err(parquet_error)?;
            index += 1;
        }
        group.close().map_err(parquet_error)?;
        Ok(())
    }
}

fn column_type(name: &str, data_type: Option<CdmType>) -> parquet::errors::Result<Type> {
    let (physical, logical) = match data_type {
        None => {
            return Type::primitive_type_builder(name, PhysicalType::BOOLEAN)
                .with_repetition(Repetition::REQUIRED)
                .build();
        }
        Some(CdmType::String) => (PhysicalType::BYTE_ARRAY, Some(LogicalType::String)),
        Some(CdmType::Json) => (PhysicalType::BYTE_ARRAY, Some(LogicalType::String)),
        Some(CdmType::Int64) => (PhysicalType::INT64, None),
        Some(CdmType::Double) => (PhysicalType::DOUBLE, None),
        Some(CdmType::Boolean) => (PhysicalType::BOOLEAN, None),
        Some(CdmType::DateTimeOffset) => (
            PhysicalType::INT64,
            Some(LogicalType::timestamp(true, TimeUnit::MICROS)),
        ),
        Some(CdmType::Date) => (PhysicalType::INT32, Some(LogicalType::Date)),
    };
    Type::primitive_type_builder(name, physical)
        .with_repetition(Repetition::OPTIONAL)
        .with_logical_type(logical)
        .build()
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn int64_of(value: &Value) -> Result<i64, String> {
    match value {
        Value::Number(n) => n.as_i64().ok_or_else(|| format!("{n} is not a whole number")),
        Value::String(s) => s.trim().parse().map_err(|_| format!("'{s}' is not a whole number")),
        other => Err(format!("{other} is not a whole number")),
    }
}

fn micros_of(value: &Value) -> Result<i64, String> {
    let text = value.as_str().ok_or_else(|| format!("{value} is not a timestamp"))?;
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_micros())
        .map_err(|_| format!("'{text}' is not an RFC 3339 timestamp"))
}

fn days_of(value: &Value) -> Result<i32, String> {
    let text = value.as_str().ok_or_else(|| format!("{value} is not a date"))?;
    let date = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|_| format!("'{text}' is not a date YYYY-MM-DD"))?;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("the epoch is a date");
    i32::try_from((date - epoch).num_days()).map_err(|_| format!("'{text}' is out of range"))
}

fn parquet_error(error: parquet::errors::ParquetError) -> io::Error {
    match error {
        parquet::errors::ParquetError::External(inner) => io::Error::other(inner),
        other => io::Error::other(other.to_string()),
    }
}

fn column_error(index: usize, message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("column {}: {message}", index + 1))
}

#[cfg(test)]
mod tests {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    use serde_json::json;

    use super::*;

    fn column(name: &str, data_type: Option<CdmType>) -> ParquetColumn {
        ParquetColumn {
            name: name.into(),
            data_type,
        }
    }

    fn read_back(file: Vec<u8>) -> Vec<Vec<Field>> {
        let reader = SerializedFileReader::new(bytes::Bytes::from(file)).unwrap();
        reader
            .get_row_iter(None)
            .unwrap()
            .map(|r| r.unwrap().get_column_iter().map(|(_, f)| f.clone()).collect())
            .collect()
    }

    #[test]
    fn rows_read_back_typed_with_nulls() {
        let columns = vec![
            column("id", Some(CdmType::String)),
            column("n", Some(CdmType::Int64)),
            column("x", Some(CdmType::Double)),
            column("b", Some(CdmType::Boolean)),
            column("t", Some(CdmType::DateTimeOffset)),
            column("d", Some(CdmType::Date)),
            column("j", Some(CdmType::Json)),
            column("_deleted", None),
        ];
        let mut partition = ParquetPartition::new(Vec::new(), &columns, ParquetCompression::Zstd).unwrap();
        partition
            .write_row(&[
                json!("a"),
                json!(7),
                json!(1.5),
                json!(true),
                json!("2026-01-02T03:04:05.000006Z"),
                json!("1970-01-11"),
                json!({"k": [1]}),
                json!(false),
            ])
            .unwrap();
        partition
            .write_row(&[
                json!("b"),
                json!(null),
                json!(null),
                json!(null),
                json!(null),
                json!(null),
                json!(null),
                json!(true),
            ])
            .unwrap();
        let rows = read_back(partition.finish().unwrap());
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0][0], Field::Str("a".into()));
        assert_eq!(rows[0][1], Field::Long(7));
        assert_eq!(rows[0][2], Field::Double(1.5));
        assert_eq!(rows[0][3], Field::Bool(true));
        assert_eq!(rows[0][4], Field::TimestampMicros(1_767_323_045_000_006));
        assert_eq!(rows[0][5], Field::Date(10));
        assert_eq!(rows[0][6], Field::Str("{\"k\":[1]}".into()));
        assert_eq!(rows[0][7], Field::Bool(false));
        assert!(rows[1][1..7].iter().all(|f| *f == Field::Null), "{:?}", rows[1]);
        assert_eq!(rows[1][7], Field::Bool(true));
    }

    #[test]
    fn a_refused_row_leaves_the_partition_as_it_was() {
        let columns = vec![
            column("id", Some(CdmType::String)),
            column("n", Some(CdmType::Int64)),
            column("_deleted", None),
        ];
        let mut partition = ParquetPartition::new(Vec::new(), &columns, ParquetCompression::Snappy).unwrap();
        partition.write_row(&[json!("a"), json!(1), json!(false)]).unwrap();
        let refused = partition
            .write_row(&[json!("b"), json!("two"), json!(false)])
            .unwrap_err();
        assert!(refused.to_string().contains("column 2"), "{refused}");
        partition.write_row(&[json!("c"), json!(null), json!(true)]).unwrap();
        assert_eq!(
            read_back(partition.finish().unwrap()),
            vec![
                vec![Field::Str("a".into()), Field::Long(1), Field::Bool(false)],
                vec![Field::Str("c".into()), Field::Null, Field::Bool(true)],
            ]
        );
    }

    #[test]
    fn only_columns_whose_values_repeat_get_a_dictionary() {
        let columns = vec![
            column("id", Some(CdmType::String)),
            column("country", Some(CdmType::String)),
            column("n", Some(CdmType::Int64)),
        ];
        let mut partition = ParquetPartition::new(Vec::new(), &columns, ParquetCompression::Snappy).unwrap();
        let countries = ["DE", "FR", "US"];
        for i in 0..10_000 {
            partition
                .write_row(&[json!(format!("id-{i}")), json!(countries[i % 3]), json!(i)])
                .unwrap();
        }
        let file = partition.finish().unwrap();
        let reader = SerializedFileReader::new(bytes::Bytes::from(file.clone())).unwrap();
        let group = reader.metadata().row_group(0);
        let dictionary = |i: usize| group.column(i).dictionary_page_offset().is_some();
        assert_eq!((dictionary(0), dictionary(1), dictionary(2)), (false, true, false));
        let rows = read_back(file);
        assert_eq!(rows.len(), 10_000);
        assert_eq!(
            rows[9_999],
            vec![
                Field::Str("id-9999".into()),
                Field::Str("DE".into()),
                Field::Long(9_999)
            ]
        );
    }
}
