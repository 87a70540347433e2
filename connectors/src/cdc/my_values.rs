//! MySQL/MariaDB values as the text [`super::pg_values::RowsBuilder`] turns into Arrow
//! columns: binlog values (binary) and snapshot values (the text protocol) are both rendered
//! the same way, so a row reads the same whichever path brought it.
//!
//! DATETIME is read as UTC, TIMESTAMP converted to UTC (the snapshot session runs with
//! `time_zone = '+00:00'`); BLOB/BINARY go to BYTEA as bytes; TINYINT(1) and BIT may be read
//! as BOOLEAN; ENUM and SET become their text.

use arrow::datatypes::DataType;

use super::binlog::{self, Value};

/// One upstream column, from `information_schema.COLUMNS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    pub name: String,
    /// `DATA_TYPE`, lower case (`int`, `varchar`, `datetime`...).
    pub data_type: String,
    pub unsigned: bool,
    pub primary_key: bool,
    /// Members of an ENUM or SET, in order.
    pub members: Vec<String>,
}

impl ColumnInfo {
    /// From `COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, COLUMN_KEY`.
    pub fn new(name: &str, data_type: &str, column_type: &str, key: &str) -> Self {
        let data_type = data_type.to_ascii_lowercase();
        let column_type_lower = column_type.to_ascii_lowercase();
        let members = if data_type == "enum" || data_type == "set" { parse_members(column_type) } else { Vec::new() };
        Self {
            name: name.to_string(),
            unsigned: column_type_lower.contains("unsigned"),
            primary_key: key.eq_ignore_ascii_case("PRI"),
            data_type,
            members,
        }
    }
}

/// `enum('a','b''c')` to `["a", "b'c"]`.
fn parse_members(column_type: &str) -> Vec<String> {
    let Some(open) = column_type.find('(') else { return Vec::new() };
    let inner = &column_type[open + 1..column_type.rfind(')').unwrap_or(column_type.len())];
    let mut out = Vec::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\'' {
            continue;
        }
        let mut member = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\'' if chars.peek() == Some(&'\'') => {
                    chars.next();
                    member.push('\'');
                }
                '\'' => break,
                '\\' => {
                    if let Some(n) = chars.next() {
                        member.push(n);
                    }
                }
                c => member.push(c),
            }
        }
        out.push(member);
    }
    out
}

/// True when an upstream column of `data_type` can be read as `declared`.
pub fn compatible(data_type: &str, declared: &DataType) -> bool {
    use DataType::*;
    let numeric =
        |t: &DataType| matches!(t, Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 | Float32 | Float64);
    match data_type {
        "tinyint" | "bit" => numeric(declared) || matches!(declared, Boolean | Decimal128(_, _) | Utf8),
        "smallint" | "mediumint" | "int" | "integer" | "bigint" | "year" => {
            numeric(declared) || matches!(declared, Decimal128(_, _) | Utf8)
        }
        "decimal" | "numeric" | "float" | "double" | "real" => {
            matches!(declared, Float32 | Float64 | Decimal128(_, _) | Utf8)
        }
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
            matches!(declared, Binary | Utf8)
        }
        "date" => matches!(declared, Date32 | Timestamp(_, _) | Utf8),
        "datetime" | "timestamp" => matches!(declared, Timestamp(_, _) | Utf8),
        "time" => matches!(declared, Time64(_) | Utf8),
        _ => matches!(declared, Utf8),
    }
}

fn hex(bytes: &[u8]) -> Vec<u8> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(2 + bytes.len() * 2);
    out.extend_from_slice(b"\\x");
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize]);
        out.push(DIGITS[(b & 15) as usize]);
    }
    out
}

fn utc_suffix(target: &DataType) -> &'static str {
    if matches!(target, DataType::Timestamp(_, Some(_))) { "+00:00" } else { "" }
}

fn micros_text(micros: u32) -> String {
    if micros == 0 { String::new() } else { format!(".{micros:06}") }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A binlog value as text for a column declared as `target`; `None` for NULL.
///
/// # Errors
/// A value this reader cannot represent (the row is then counted as bad).
pub fn render(value: &Value, info: &ColumnInfo, target: &DataType) -> Result<Option<Vec<u8>>, String> {
    let text = match value {
        Value::Null => return Ok(None),
        Value::Int(v) if *target == DataType::Boolean => (if *v != 0 { "t" } else { "f" }).to_string(),
        Value::UInt(v) | Value::Bit(v) if *target == DataType::Boolean => (if *v != 0 { "t" } else { "f" }).to_string(),
        Value::Int(v) => v.to_string(),
        Value::UInt(v) | Value::Bit(v) => v.to_string(),
        Value::Float(v) => v.to_string(),
        Value::Double(v) => v.to_string(),
        Value::Decimal(v) => v.clone(),
        Value::Bytes(b) if *target == DataType::Binary => return Ok(Some(hex(b))),
        Value::Bytes(b) => return Ok(Some(b.clone())),
        Value::Date { year, month, day } => format!("{year:04}-{month:02}-{day:02}"),
        Value::DateTime { year, month, day, hour, minute, second, micros } => format!(
            "{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02}{}{}",
            micros_text(*micros),
            utc_suffix(target)
        ),
        Value::Timestamp { seconds, micros } => {
            let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
            let s = seconds.rem_euclid(86_400);
            format!(
                "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}{}{}",
                s / 3600,
                s / 60 % 60,
                s % 60,
                micros_text(*micros),
                utc_suffix(target)
            )
        }
        Value::Time { negative, hours, minutes, seconds, micros } => {
            format!("{}{hours:02}:{minutes:02}:{seconds:02}{}", if *negative { "-" } else { "" }, micros_text(*micros))
        }
        Value::Year(y) => y.to_string(),
        Value::Enum(i) => match (*i as usize).checked_sub(1) {
            None => String::new(),
            Some(i) => info.members.get(i).cloned().ok_or_else(|| format!("ENUM index {} out of range", i + 1))?,
        },
        Value::Set(bits) => {
            let names: Vec<&str> = info
                .members
                .iter()
                .enumerate()
                .filter(|(i, _)| *i < 64 && bits & (1 << i) != 0)
                .map(|(_, m)| m.as_str())
                .collect();
            names.join(",")
        }
        Value::Unsupported(t) => {
            return Err(format!(
                "column {} has binlog type {t} (MySQL binary JSON), which mysql-cdc cannot decode",
                info.name
            ));
        }
    };
    if *target == DataType::Binary {
        return Ok(Some(hex(text.as_bytes())));
    }
    Ok(Some(text.into_bytes()))
}

/// A value of the snapshot (text protocol, result column of MySQL type `kind`) as text for a
/// column declared as `target`, matching what [`render`] makes of the same value.
pub fn render_text(value: Option<&[u8]>, kind: u8, target: &DataType) -> Option<Vec<u8>> {
    let v = value?;
    Some(match (kind, target) {
        (binlog::T_BIT, DataType::Boolean) => (if v.iter().any(|b| *b != 0) { "t" } else { "f" }).into(),
        (binlog::T_BIT, DataType::Binary) => hex(v),
        (binlog::T_BIT, _) => v.iter().fold(0u64, |acc, &b| (acc << 8) | b as u64).to_string().into_bytes(),
        (_, DataType::Boolean) => (if v == b"0" { "f" } else { "t" }).into(),
        (_, DataType::Binary) => hex(v),
        (binlog::T_DATETIME | binlog::T_TIMESTAMP | binlog::T_DATETIME2 | binlog::T_TIMESTAMP2, _) => {
            let mut text = trim_zero_fraction(v);
            text.extend_from_slice(utc_suffix(target).as_bytes());
            text
        }
        (binlog::T_TIME | binlog::T_TIME2, _) => trim_zero_fraction(v),
        _ => v.to_vec(),
    })
}

/// `12:00:00.000000` to `12:00:00`, `12:00:00.500000` kept: as [`render`] prints them.
fn trim_zero_fraction(v: &[u8]) -> Vec<u8> {
    match v.iter().rposition(|&b| b == b'.') {
        Some(dot) if v[dot + 1..].iter().all(|&b| b == b'0') => v[..dot].to_vec(),
        Some(dot) => {
            // Six digits, as render prints microseconds.
            let mut out = v[..=dot].to_vec();
            let frac = &v[dot + 1..];
            out.extend_from_slice(&frac[..frac.len().min(6)]);
            out.extend(std::iter::repeat_n(b'0', 6usize.saturating_sub(frac.len())));
            out
        }
        None => v.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::TimeUnit;

    use super::*;

    fn text(v: Result<Option<Vec<u8>>, String>) -> String {
        String::from_utf8(v.expect("render").expect("not null")).expect("utf8")
    }

    #[test]
    fn values_render_like_the_snapshot() {
        let info = ColumnInfo::new("c", "enum", "enum('new','it''s')", "");
        assert_eq!(info.members, vec!["new".to_string(), "it's".into()]);
        assert_eq!(text(render(&Value::Enum(2), &info, &DataType::Utf8)), "it's");
        let set = ColumnInfo::new("s", "set", "set('a','b','c')", "");
        assert_eq!(text(render(&Value::Set(0b101), &set, &DataType::Utf8)), "a,c");
        let plain = ColumnInfo::new("x", "int", "int(10) unsigned", "PRI");
        assert!(plain.unsigned && plain.primary_key);
        let tz = DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()));
        let ts = Value::Timestamp { seconds: 1_709_618_828, micros: 250_000 };
        assert_eq!(text(render(&ts, &plain, &tz)), "2024-03-05 06:07:08.250000+00:00");
        assert_eq!(
            render_text(Some(b"2024-03-05 06:07:08.250000"), binlog::T_TIMESTAMP, &tz),
            Some(b"2024-03-05 06:07:08.250000+00:00".to_vec())
        );
        assert_eq!(
            render_text(Some(b"2024-03-05 06:07:08.000"), binlog::T_DATETIME, &DataType::Utf8),
            Some(b"2024-03-05 06:07:08".to_vec())
        );
        assert_eq!(text(render(&Value::Bytes(vec![0, 255]), &plain, &DataType::Binary)), "\\x00ff");
        assert_eq!(render_text(Some(&[0, 255]), binlog::T_BLOB, &DataType::Binary), Some(b"\\x00ff".to_vec()));
        assert_eq!(text(render(&Value::Int(1), &plain, &DataType::Boolean)), "t");
        assert_eq!(render_text(Some(b"0"), binlog::T_TINY, &DataType::Boolean), Some(b"f".to_vec()));
        assert_eq!(text(render(&Value::Float(1.1), &plain, &DataType::Float64)), "1.1");
        assert!(render(&Value::Unsupported(245), &plain, &DataType::Utf8).is_err());
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_787), (2024, 3, 5));
        assert!(compatible("bigint", &DataType::Int64) && !compatible("varchar", &DataType::Int32));
    }
}
