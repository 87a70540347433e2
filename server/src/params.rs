//! Decoding bound parameters of the extended protocol.
//!
//! A client may declare a parameter's type (psycopg sends `int2` for small ints, JDBC `varchar`
//! for strings) or leave it to the server (asyncpg, pg8000, tokio-postgres). Eddy decodes the
//! bytes by the declared type, or by the type it inferred from the statement, and then casts
//! the value to the inferred type: an `int2` bound to a `NUMERIC` column is accepted as
//! Postgres would accept it.

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{ParamValues, ScalarValue};
use pgwire::api::Type;
use pgwire::api::portal::Portal;
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};

fn invalid(message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), "22P02".into(), message)))
}

/// Decodes every parameter of `portal`, given the types inferred for them and the Postgres
/// types described in their place (`described`, where the server overrides the inferred one).
///
/// # Errors
/// 22P02 when a value does not decode as its type or cannot be cast to the inferred type.
pub fn decode<S: Clone>(
    portal: &Portal<S>,
    inferred: &[Option<DataType>],
    described: &[Option<Type>],
) -> PgWireResult<ParamValues> {
    let mut values = Vec::with_capacity(portal.parameter_len());
    for i in 0..portal.parameter_len() {
        let target = inferred.get(i).cloned().flatten();
        let declared = portal
            .statement
            .parameter_types
            .get(i)
            .cloned()
            .flatten()
            .filter(|t| *t != Type::UNKNOWN)
            .or_else(|| described.get(i).cloned().flatten());
        let pg_type = declared
            .or_else(|| target.as_ref().and_then(|t| arrow_pg::datatypes::into_pg_type(t).ok()))
            .unwrap_or(Type::UNKNOWN);
        let value = decode_one(portal, i, &pg_type)?;
        let value = match &target {
            Some(t) if value.data_type() != *t => {
                value.cast_to(t).map_err(|e| invalid(format!("parameter ${} cannot be read as {t}: {e}", i + 1)))?
            }
            _ => value,
        };
        values.push(value.into());
    }
    Ok(ParamValues::List(values))
}

fn decode_one<S: Clone>(portal: &Portal<S>, i: usize, pg_type: &Type) -> PgWireResult<ScalarValue> {
    Ok(match *pg_type {
        Type::BOOL => ScalarValue::Boolean(portal.parameter::<bool>(i, pg_type)?),
        Type::INT2 => ScalarValue::Int16(portal.parameter::<i16>(i, pg_type)?),
        Type::INT4 => ScalarValue::Int32(portal.parameter::<i32>(i, pg_type)?),
        Type::INT8 => ScalarValue::Int64(portal.parameter::<i64>(i, pg_type)?),
        Type::FLOAT4 => ScalarValue::Float32(portal.parameter::<f32>(i, pg_type)?),
        Type::FLOAT8 => ScalarValue::Float64(portal.parameter::<f64>(i, pg_type)?),
        Type::NUMERIC => match portal.parameter::<rust_decimal::Decimal>(i, pg_type)? {
            Some(d) => {
                let scale = d.scale() as i8;
                ScalarValue::Decimal128(Some(d.mantissa()), 38, scale)
            }
            None => ScalarValue::Decimal128(None, 38, 10),
        },
        Type::DATE => {
            let d = portal.parameter::<NaiveDate>(i, pg_type)?;
            let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
            ScalarValue::Date32(d.map(|d| (d - epoch).num_days() as i32))
        }
        Type::TIMESTAMP => {
            let t = portal.parameter::<NaiveDateTime>(i, pg_type)?;
            ScalarValue::TimestampMicrosecond(t.map(|t| t.and_utc().timestamp_micros()), None)
        }
        Type::TIMESTAMPTZ => {
            let t = portal.parameter::<DateTime<FixedOffset>>(i, pg_type)?;
            ScalarValue::TimestampMicrosecond(t.map(|t| t.timestamp_micros()), Some("+00:00".into()))
        }
        Type::BYTEA => ScalarValue::Binary(portal.parameter::<Vec<u8>>(i, pg_type)?),
        // Arrays, in either format (asyncpg sends them binary): one-dimensional, as Postgres'
        // own array parameters nearly always are.
        Type::BOOL_ARRAY => {
            list(portal.parameter::<Vec<Option<bool>>>(i, pg_type)?, ScalarValue::Boolean, DataType::Boolean)?
        }
        Type::INT2_ARRAY => {
            list(portal.parameter::<Vec<Option<i16>>>(i, pg_type)?, ScalarValue::Int16, DataType::Int16)?
        }
        Type::INT4_ARRAY => {
            list(portal.parameter::<Vec<Option<i32>>>(i, pg_type)?, ScalarValue::Int32, DataType::Int32)?
        }
        Type::INT8_ARRAY => {
            list(portal.parameter::<Vec<Option<i64>>>(i, pg_type)?, ScalarValue::Int64, DataType::Int64)?
        }
        Type::FLOAT4_ARRAY => {
            list(portal.parameter::<Vec<Option<f32>>>(i, pg_type)?, ScalarValue::Float32, DataType::Float32)?
        }
        Type::FLOAT8_ARRAY => {
            list(portal.parameter::<Vec<Option<f64>>>(i, pg_type)?, ScalarValue::Float64, DataType::Float64)?
        }
        Type::OID_ARRAY => {
            list(portal.parameter::<Vec<Option<u32>>>(i, pg_type)?, ScalarValue::UInt32, DataType::UInt32)?
        }
        Type::TEXT_ARRAY | Type::VARCHAR_ARRAY | Type::BPCHAR_ARRAY | Type::NAME_ARRAY => {
            list(portal.parameter::<Vec<Option<String>>>(i, pg_type)?, ScalarValue::Utf8, DataType::Utf8)?
        }
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN | Type::JSON | Type::JSONB => {
            ScalarValue::Utf8(raw_text(portal, i)?)
        }
        _ => {
            // Anything else: take the text form and let the cast to the inferred type parse it.
            if portal.parameter_format.is_binary(i) {
                return Err(invalid(format!(
                    "binary parameters of type {} are not supported; send it as text",
                    pg_type.name()
                )));
            }
            ScalarValue::Utf8(raw_text(portal, i)?)
        }
    })
}

/// A list value from a decoded array parameter (`None` is a NULL array).
fn list<T>(
    values: Option<Vec<Option<T>>>,
    scalar: impl Fn(Option<T>) -> ScalarValue,
    element: DataType,
) -> PgWireResult<ScalarValue> {
    let Some(values) = values else {
        return ScalarValue::try_from(DataType::new_list(element, true)).map_err(|e| invalid(e.to_string()));
    };
    let scalars: Vec<ScalarValue> = values.into_iter().map(scalar).collect();
    Ok(ScalarValue::List(ScalarValue::new_list_nullable(&scalars, &element)))
}

fn raw_text<S: Clone>(portal: &Portal<S>, i: usize) -> PgWireResult<Option<String>> {
    match portal.parameters.get(i) {
        Some(Some(bytes)) => {
            let mut bytes = bytes.as_ref();
            // jsonb's binary form starts with a version byte.
            if portal.parameter_format.is_binary(i)
                && bytes.first() == Some(&1)
                && matches!(portal.statement.parameter_types.get(i), Some(Some(Type::JSONB)))
            {
                bytes = &bytes[1..];
            }
            String::from_utf8(bytes.to_vec())
                .map(Some)
                .map_err(|_| invalid(format!("parameter ${} is not valid UTF-8", i + 1)))
        }
        Some(None) => Ok(None),
        None => Err(PgWireError::ParameterIndexOutOfBound(i)),
    }
}
