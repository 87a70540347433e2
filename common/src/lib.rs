//! Types shared by every Eddy crate: the change model ([`change::ChangeBatch`]), the ids of
//! catalog objects, and the error classification that maps failures to SQLSTATEs.

pub mod change;
pub mod error;
pub mod ids;

pub use change::{ChangeBatch, Op};
pub use error::{ErrorClass, ErrorDomain, SqlState};
