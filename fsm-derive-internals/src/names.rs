//! Names the derive invents: modules, method names, and the hash that keys event variants.

use heck::ToSnakeCase;
use proc_macro2::Span;
use syn::Ident;

/// `OrderCmd` -> `order_cmd`, as a module or method name that is never a keyword.
pub(crate) fn snake_ident(ident: &Ident, span: Span) -> Ident {
    let snake = ident.to_string().trim_start_matches("r#").to_snake_case();
    match snake.as_str() {
        // Keywords that cannot be raw identifiers.
        "self" | "super" | "crate" | "_" => Ident::new(&format!("{snake}_"), span),
        _ if syn::parse_str::<Ident>(&snake).is_ok() => Ident::new(&snake, span),
        _ => Ident::new_raw(&snake, span),
    }
}

/// An identifier's name without the `r#` of a raw identifier: `r#Go` and `Go` are one name to
/// rustc, so every table the derive keys by name keys by this.
pub(crate) fn bare(ident: &Ident) -> String {
    let name = ident.to_string();
    match name.strip_prefix("r#") {
        Some(rest) => rest.to_owned(),
        None => name,
    }
}

/// FNV-1a, 64 bits, of a variant name: the key under which the event derive implements the
/// variant's trait and the state derive finds it. Both derives use this one function. The
/// `r#` of a raw identifier is not part of the name (`r#Next` and `Next` are one identifier).
pub(crate) fn variant_hash(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.trim_start_matches("r#").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_names_avoid_keywords() {
        let s = Span::call_site();
        let id = |n: &str| snake_ident(&Ident::new(n, s), s).to_string();
        assert_eq!(id("OrderCmd"), "order_cmd");
        assert_eq!(id("Match"), "r#match");
        assert_eq!(id("Self_"), "self_");
        assert_eq!(id("Super"), "super_");
        assert_eq!(id("HTTPRequest"), "http_request");
    }

    #[test]
    fn variant_hash_is_fnv1a() {
        assert_eq!(variant_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(variant_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(variant_hash("Pay"), variant_hash("Pya"));
        assert_eq!(
            variant_hash("r#Pay"),
            variant_hash("Pay"),
            "r#Pay and Pay are one name"
        );
    }
}
