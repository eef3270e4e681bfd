//! Kubernetes quantities in their canonical form, as apimachinery's
//! `resource.Quantity` writes them back after reading (`8192Mi` is `8Gi`,
//! `0.5` is `500m`, `1000M` is `1G`). KubeRay's cluster hash is taken over
//! that form, so a quantity respelled is not a change to it.

/// How a quantity was written, which decides how it is written back.
#[derive(Clone, Copy, PartialEq)]
enum Format {
    BinarySI,
    DecimalSI,
    DecimalExponent,
}

const DECIMAL: [(i32, &str); 10] = [
    (-9, "n"),
    (-6, "u"),
    (-3, "m"),
    (0, ""),
    (3, "k"),
    (6, "M"),
    (9, "G"),
    (12, "T"),
    (15, "P"),
    (18, "E"),
];
const BINARY: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];

/// The canonical form of `text`, or `None` when it is no quantity or out of
/// the range this reimplementation covers (beyond 2^127 or exponent ±10^9).
pub fn canonical(text: &str) -> Option<String> {
    let (mut value, mut exp10, format) = parse(text)?;
    if value == 0 {
        return Some("0".into());
    }
    // Quantities keep nano precision, rounding away from zero.
    if exp10 < -9 {
        let divisor = 10i128.checked_pow((-9 - exp10).unsigned_abs())?;
        let rounded = value.abs() / divisor + i128::from(value.abs() % divisor != 0);
        value = rounded * value.signum();
        exp10 = -9;
    }
    let integer = integer(value, exp10);
    match (format, integer) {
        (Format::BinarySI, Some(n)) if n.abs() >= 1024 => binary(n),
        (Format::BinarySI, _) => decimal(value, exp10, Format::DecimalSI),
        (format, _) => decimal(value, exp10, format),
    }
}

/// `value × 10^exp10` when it is a whole number.
fn integer(value: i128, exp10: i32) -> Option<i128> {
    let scale = 10i128.checked_pow(exp10.unsigned_abs())?;
    if exp10 >= 0 {
        value.checked_mul(scale)
    } else {
        (value % scale == 0).then(|| value / scale)
    }
}

fn binary(mut n: i128) -> Option<String> {
    let mut power = 0;
    while n % 1024 == 0 {
        n /= 1024;
        power += 1;
    }
    Some(format!("{n}{}", BINARY.get(power)?))
}

fn decimal(mut value: i128, mut exp10: i32, format: Format) -> Option<String> {
    while value % 10 == 0 {
        value /= 10;
        exp10 += 1;
    }
    let down = exp10.rem_euclid(3);
    value = value.checked_mul(10i128.pow(down.unsigned_abs()))?;
    exp10 -= down;
    let suffix = match format {
        Format::DecimalExponent if exp10 == 0 => String::new(),
        Format::DecimalExponent => format!("e{exp10}"),
        _ => DECIMAL.iter().find(|(e, _)| *e == exp10)?.1.to_string(),
    };
    Some(format!("{value}{suffix}"))
}

/// The exact value as `value × 10^exp10` (binary suffixes multiplied in).
fn parse(text: &str) -> Option<(i128, i32, Format)> {
    let (negative, rest) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let number_end = rest
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let digits = format!("{whole}{fraction}");
    let mut value: i128 = digits.parse().ok()?;
    if negative {
        value = -value;
    }
    let mut exp10 = -i32::try_from(fraction.len()).ok()?;
    let format = if let Some(power) = BINARY.iter().skip(1).position(|s| *s == suffix) {
        value = value.checked_mul(1i128 << (10 * (power + 1)))?;
        Format::BinarySI
    } else if let Some((e, _)) = DECIMAL.iter().find(|(_, s)| *s == suffix) {
        exp10 += e;
        Format::DecimalSI
    } else {
        let exponent = suffix.strip_prefix(['e', 'E'])?;
        let exponent: i32 = exponent.parse().ok()?;
        if exponent.abs() > 1_000_000_000 {
            return None;
        }
        exp10 += exponent;
        Format::DecimalExponent
    };
    Some((value, exp10, format))
}

#[cfg(test)]
mod tests {
    use super::canonical;

    #[test]
    fn quantities_are_written_back_as_apimachinery_writes_them() {
        for (written, canonical_form) in [
            ("8192Mi", "8Gi"),
            ("8Gi", "8Gi"),
            ("1024Ki", "1Mi"),
            ("1025Ki", "1025Ki"),
            ("1Ki", "1Ki"),
            ("512Ki", "512Ki"),
            ("0.5Ki", "512"),
            ("100Mi", "100Mi"),
            ("1.5Gi", "1536Mi"),
            ("0.5Gi", "512Mi"),
            ("0.5", "500m"),
            ("1500m", "1500m"),
            ("2000m", "2"),
            ("1000M", "1G"),
            ("16", "16"),
            ("4", "4"),
            ("200G", "200G"),
            ("0", "0"),
            ("0Gi", "0"),
            ("1e3", "1e3"),
            ("1000e0", "1e3"),
            ("1.0000000001", "1000000001n"),
            ("-1Gi", "-1Gi"),
            ("+16Gi", "16Gi"),
        ] {
            assert_eq!(
                canonical(written).as_deref(),
                Some(canonical_form),
                "{written}"
            );
        }
        for not_a_quantity in ["", "Gi", "8GB", "1..2", "e3"] {
            assert_eq!(canonical(not_a_quantity), None, "{not_a_quantity}");
        }
    }
}
