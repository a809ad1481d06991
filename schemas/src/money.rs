//! Money: decimal, two places, bounded. Never a float.
//!
//! Amounts travel as Avro `decimal` (bytes, precision 18, scale 2): the unscaled value
//! in minor units (kopecks, cents) as a big-endian two's-complement integer.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;

/// Decimal places of every amount.
pub const SCALE: u32 = 2;
/// The largest amount a payment may carry (seeds: 999999999.99).
pub const AMOUNT_MAX_MINOR: i64 = 99_999_999_999;

/// Why a number is not an amount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("amount must be greater than zero")]
    NotPositive,
    #[error("amount has more than {SCALE} decimal places")]
    TooPrecise,
    #[error("amount is above 999999999.99")]
    TooLarge,
    #[error("amount is not a decimal number")]
    NotANumber,
    #[error("amount bytes are not a valid decimal ({0} bytes)")]
    BadBytes(usize),
}

/// A payment amount: > 0, at most 999999999.99, exactly two decimal places.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount {
    /// The amount in minor units (1.50 → 150), which is what is stored and compared.
    minor: i64,
}

impl Amount {
    /// Validates a decimal: more than two places is refused, not rounded, because a
    /// silently rounded payment is a wrong payment.
    pub fn try_from_decimal(value: Decimal) -> Result<Self, AmountError> {
        let normalized = value.normalize();
        if normalized.scale() > SCALE {
            return Err(AmountError::TooPrecise);
        }
        if normalized <= Decimal::ZERO {
            return Err(AmountError::NotPositive);
        }
        let mut scaled = normalized;
        scaled.rescale(SCALE);
        let minor = i64::try_from(scaled.mantissa()).map_err(|_| AmountError::TooLarge)?;
        Self::from_minor(minor)
    }

    /// An amount from minor units.
    pub fn from_minor(minor: i64) -> Result<Self, AmountError> {
        match minor {
            m if m <= 0 => Err(AmountError::NotPositive),
            m if m > AMOUNT_MAX_MINOR => Err(AmountError::TooLarge),
            m => Ok(Self { minor: m }),
        }
    }

    /// Minor units (cents).
    pub fn minor(self) -> i64 {
        self.minor
    }

    /// As a decimal with exactly two places.
    pub fn to_decimal(self) -> Decimal {
        Decimal::new(self.minor, SCALE)
    }

    /// Avro `decimal` bytes: the unscaled value, big-endian two's complement, minimal length.
    pub fn to_avro_bytes(self) -> Vec<u8> {
        let bytes = self.minor.to_be_bytes();
        // Drop leading 0x00 bytes while the next byte keeps the sign bit clear.
        let start = (0..bytes.len() - 1)
            .find(|&i| !(bytes[i] == 0 && bytes[i + 1] & 0x80 == 0))
            .unwrap_or(bytes.len() - 1);
        bytes[start..].to_vec()
    }

    /// Reads Avro `decimal` bytes at scale 2, validating the amount. Redundant sign
    /// extension (leading 0x00 or 0xFF that repeat the sign) is accepted: writers may pad.
    pub fn from_avro_bytes(bytes: &[u8]) -> Result<Self, AmountError> {
        let mut bytes = bytes;
        while bytes.len() > 1
            && ((bytes[0] == 0x00 && bytes[1] & 0x80 == 0) || (bytes[0] == 0xFF && bytes[1] & 0x80 != 0))
        {
            bytes = &bytes[1..];
        }
        if bytes.is_empty() || bytes.len() > 8 {
            return Err(AmountError::BadBytes(bytes.len()));
        }
        let fill = if bytes[0] & 0x80 != 0 { 0xFF } else { 0x00 };
        let mut wide = [fill; 8];
        wide[8 - bytes.len()..].copy_from_slice(bytes);
        Self::from_minor(i64::from_be_bytes(wide))
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_decimal())
    }
}

impl FromStr for Amount {
    type Err = AmountError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let value = Decimal::from_str_exact(s.trim()).map_err(|_| AmountError::NotANumber)?;
        Self::try_from_decimal(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_and_precision() {
        assert_eq!("0.01".parse::<Amount>().unwrap().minor(), 1);
        assert_eq!("999999999.99".parse::<Amount>().unwrap().minor(), AMOUNT_MAX_MINOR);
        assert_eq!("10".parse::<Amount>().unwrap().to_string(), "10.00");
        assert_eq!("1.500".parse::<Amount>().unwrap().minor(), 150, "trailing zeros are not precision");
        assert_eq!("1000000000.00".parse::<Amount>(), Err(AmountError::TooLarge));
        assert_eq!("0.001".parse::<Amount>(), Err(AmountError::TooPrecise));
        assert_eq!("0".parse::<Amount>(), Err(AmountError::NotPositive));
        assert_eq!("-5".parse::<Amount>(), Err(AmountError::NotPositive));
        assert_eq!("1e3".parse::<Amount>(), Err(AmountError::NotANumber));
    }

    #[test]
    fn avro_bytes_are_minimal_twos_complement() {
        let a = |minor| Amount::from_minor(minor).unwrap().to_avro_bytes();
        assert_eq!(a(1), [0x01]);
        assert_eq!(a(127), [0x7F]);
        assert_eq!(a(128), [0x00, 0x80], "sign bit must stay clear");
        assert_eq!(a(150), [0x00, 0x96]);
        assert_eq!(a(AMOUNT_MAX_MINOR), [0x17, 0x48, 0x76, 0xE7, 0xFF]);
        for minor in [1, 127, 128, 255, 256, 65_535, 1_000_000, AMOUNT_MAX_MINOR] {
            assert_eq!(Amount::from_avro_bytes(&a(minor)).unwrap().minor(), minor);
        }
    }

    #[test]
    fn avro_bytes_of_bad_amounts_are_refused() {
        assert_eq!(Amount::from_avro_bytes(&[]), Err(AmountError::BadBytes(0)));
        assert_eq!(Amount::from_avro_bytes(&[0xFF]), Err(AmountError::NotPositive));
        assert_eq!(Amount::from_avro_bytes(&[0x00]), Err(AmountError::NotPositive));
        assert_eq!(Amount::from_avro_bytes(&[0x7F; 9]), Err(AmountError::BadBytes(9)));
        assert_eq!(Amount::from_avro_bytes(&[0x00, 0x00, 0x00, 0x96]).unwrap().minor(), 150, "padded");
        assert_eq!(Amount::from_avro_bytes(&[0xFF; 16]), Err(AmountError::NotPositive), "padded -1");
        assert_eq!(Amount::from_avro_bytes(&[0x17, 0x48, 0x76, 0xE8, 0x00]), Err(AmountError::TooLarge));
    }
}
