//! SQL column types to Arrow types, the way DataFusion maps them (so a column declared in
//! `CREATE TABLE` has the type a `CAST(... AS type)` would produce), plus `STRUCT<...>`.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Fields, IntervalUnit, TimeUnit};
use sqlparser::ast::{ArrayElemTypeDef, DataType as SqlType, ExactNumberInfo, TimezoneInfo};

use crate::error::{PlanError, Result};
use crate::parser::normalize_ident;

/// The type Eddy stores for unconstrained `NUMERIC`.
pub const DEFAULT_DECIMAL: DataType = DataType::Decimal128(38, 10);

/// The time zone `TIMESTAMPTZ` values carry.
pub const UTC: &str = "+00:00";

/// Converts a declared SQL type.
///
/// # Errors
/// `Unsupported` for types Eddy cannot store.
pub fn sql_to_arrow(t: &SqlType) -> Result<DataType> {
    Ok(match t {
        SqlType::Boolean | SqlType::Bool => DataType::Boolean,
        SqlType::TinyInt(_) | SqlType::SmallInt(_) | SqlType::Int2(_) => DataType::Int16,
        SqlType::Int(_) | SqlType::Integer(_) | SqlType::Int4(_) | SqlType::MediumInt(_) => DataType::Int32,
        SqlType::BigInt(_) | SqlType::Int8(_) | SqlType::Int64 => DataType::Int64,
        SqlType::Real | SqlType::Float4 | SqlType::Float(_) | SqlType::Float32 => DataType::Float32,
        SqlType::Double(_) | SqlType::DoublePrecision | SqlType::Float8 | SqlType::Float64 => DataType::Float64,
        SqlType::Numeric(info) | SqlType::Decimal(info) | SqlType::Dec(info) => match info {
            ExactNumberInfo::None => DEFAULT_DECIMAL,
            ExactNumberInfo::Precision(p) => DataType::Decimal128(precision(*p)?, 0),
            ExactNumberInfo::PrecisionAndScale(p, s) => {
                let p = precision(*p)?;
                let s = i8::try_from(*s).ok().filter(|s| *s >= 0 && (*s as u8) <= p).ok_or_else(|| {
                    PlanError::InvalidParameter(format!("NUMERIC scale {s} must be between 0 and the precision {p}"))
                })?;
                DataType::Decimal128(p, s)
            }
        },
        SqlType::Varchar(_)
        | SqlType::CharacterVarying(_)
        | SqlType::CharVarying(_)
        | SqlType::Nvarchar(_)
        | SqlType::Char(_)
        | SqlType::Character(_)
        | SqlType::Text
        | SqlType::String(_)
        | SqlType::JSON
        | SqlType::JSONB
        | SqlType::Uuid => DataType::Utf8,
        SqlType::Bytea | SqlType::Binary(_) | SqlType::Varbinary(_) | SqlType::Blob(_) => DataType::Binary,
        SqlType::Date => DataType::Date32,
        SqlType::Time(_, TimezoneInfo::None | TimezoneInfo::WithoutTimeZone) => DataType::Time64(TimeUnit::Nanosecond),
        SqlType::Timestamp(p, tz) => {
            let unit = match p {
                Some(0) => TimeUnit::Second,
                Some(1..=3) => TimeUnit::Millisecond,
                Some(4..=6) => TimeUnit::Microsecond,
                _ => TimeUnit::Nanosecond,
            };
            match tz {
                TimezoneInfo::Tz | TimezoneInfo::WithTimeZone => DataType::Timestamp(unit, Some(UTC.into())),
                _ => DataType::Timestamp(unit, None),
            }
        }
        SqlType::TimestampNtz(_) => DataType::Timestamp(TimeUnit::Nanosecond, None),
        SqlType::Interval { .. } => DataType::Interval(IntervalUnit::MonthDayNano),
        SqlType::Array(elem) => {
            let inner = match elem {
                ArrayElemTypeDef::AngleBracket(t)
                | ArrayElemTypeDef::SquareBracket(t, _)
                | ArrayElemTypeDef::Parenthesis(t) => sql_to_arrow(t)?,
                ArrayElemTypeDef::None => {
                    return Err(PlanError::unsupported("arrays without an element type"));
                }
            };
            DataType::List(Arc::new(Field::new("item", inner, true)))
        }
        SqlType::Struct(fields, _) => {
            let mut out = Vec::with_capacity(fields.len());
            for (i, f) in fields.iter().enumerate() {
                let name = f.field_name.as_ref().map(normalize_ident).unwrap_or_else(|| format!("f{i}"));
                out.push(Field::new(name, sql_to_arrow(&f.field_type)?, true));
            }
            DataType::Struct(Fields::from(out))
        }
        SqlType::Custom(name, _) => {
            let n = name.to_string().to_lowercase();
            match n.as_str() {
                "jsonb" | "json" | "uuid" | "citext" | "name" => DataType::Utf8,
                "timestamptz" => DataType::Timestamp(TimeUnit::Nanosecond, Some(UTC.into())),
                "int2" => DataType::Int16,
                "int4" => DataType::Int32,
                "int8" => DataType::Int64,
                "float4" => DataType::Float32,
                "float8" => DataType::Float64,
                _ => return Err(PlanError::unsupported(format!("column type {name}"))),
            }
        }
        other => return Err(PlanError::unsupported(format!("column type {other}"))),
    })
}

fn precision(p: u64) -> Result<u8> {
    u8::try_from(p)
        .ok()
        .filter(|p| (1..=38).contains(p))
        .ok_or_else(|| PlanError::InvalidParameter(format!("NUMERIC precision {p} must be between 1 and 38")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::{EddyStatement, parse_one};

    #[test]
    fn declared_types_map_like_datafusion() {
        let stmt = parse_one(
            "CREATE TABLE t (a INT, b BIGINT, c NUMERIC, d NUMERIC(10,2), e VARCHAR, f TIMESTAMP, g TIMESTAMPTZ,
                             h DOUBLE PRECISION, i STRUCT<x INT, y STRUCT<z VARCHAR>>, j INT[])",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let EddyStatement::CreateTable(t) = stmt.statement else { panic!("not a table") };
        let types: Vec<DataType> =
            t.columns.iter().map(|c| sql_to_arrow(&c.data_type).unwrap_or_else(|e| panic!("{e}"))).collect();
        assert_eq!(types[0], DataType::Int32);
        assert_eq!(types[2], DataType::Decimal128(38, 10));
        assert_eq!(types[3], DataType::Decimal128(10, 2));
        assert_eq!(types[5], DataType::Timestamp(TimeUnit::Nanosecond, None));
        assert_eq!(types[6], DataType::Timestamp(TimeUnit::Nanosecond, Some(UTC.into())));
        let DataType::Struct(fields) = &types[8] else { panic!("not a struct: {:?}", types[8]) };
        assert_eq!(fields.len(), 2);
        assert!(matches!(fields[1].data_type(), DataType::Struct(_)));
        assert!(matches!(types[9], DataType::List(_)));
    }
}
