//! JSON encoding that refuses non-finite floats.
//!
//! serde_json writes `NaN` and infinities as `null`, which no float type
//! reads back: the write would succeed and every later read fail. [`Finite`]
//! wraps serde_json's serializer and fails on such a float instead, during
//! the one pass that writes the bytes (no second pass, no allocation; the
//! wrapper is a zero-cost layer around each call).

use serde::ser::{self, Serialize, Serializer};

/// Writes `value` as JSON into `writer`; a NaN or infinity anywhere in it is an error.
pub(super) fn to_writer<W: std::io::Write, T: ?Sized + Serialize>(
    writer: W,
    value: &T,
) -> serde_json::Result<()> {
    let mut ser = serde_json::Serializer::new(writer);
    value.serialize(Finite(&mut ser))
}

/// `value` as JSON in a new buffer (sized as `serde_json::to_vec` does).
pub(super) fn to_vec<T: ?Sized + Serialize>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(128);
    to_writer(&mut out, value)?;
    Ok(out)
}

/// The error for a non-finite float, naming which one.
#[cold]
fn non_finite<E: ser::Error>(x: f64) -> E {
    let what = if x.is_nan() {
        "NaN"
    } else if x > 0.0 {
        "+inf"
    } else {
        "-inf"
    };
    E::custom(format_args!("non-finite float ({what}) cannot be stored as JSON"))
}

/// A serializer (or one of its compound serializers) whose floats are
/// checked before they reach the wrapped one; everything else is passed on.
struct Finite<S>(S);

/// A value serialized through [`Finite`] (what compound serializers pass on).
struct Checked<'a, T: ?Sized>(&'a T);

impl<T: ?Sized + Serialize> Serialize for Checked<'_, T> {
    #[inline]
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(Finite(serializer))
    }
}

/// Methods passed on unchanged: `name(self, v: T)`.
macro_rules! pass {
    ($($method:ident($t:ty);)*) => {$(
        #[inline]
        fn $method(self, v: $t) -> Result<S::Ok, S::Error> {
            self.0.$method(v)
        }
    )*};
}

impl<S: Serializer> Serializer for Finite<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = Finite<S::SerializeSeq>;
    type SerializeTuple = Finite<S::SerializeTuple>;
    type SerializeTupleStruct = Finite<S::SerializeTupleStruct>;
    type SerializeTupleVariant = Finite<S::SerializeTupleVariant>;
    type SerializeMap = Finite<S::SerializeMap>;
    type SerializeStruct = Finite<S::SerializeStruct>;
    type SerializeStructVariant = Finite<S::SerializeStructVariant>;

    pass! {
        serialize_bool(bool);
        serialize_i8(i8);
        serialize_i16(i16);
        serialize_i32(i32);
        serialize_i64(i64);
        serialize_i128(i128);
        serialize_u8(u8);
        serialize_u16(u16);
        serialize_u32(u32);
        serialize_u64(u64);
        serialize_u128(u128);
        serialize_char(char);
        serialize_str(&str);
        serialize_bytes(&[u8]);
        serialize_unit_struct(&'static str);
    }

    #[inline]
    fn serialize_f32(self, v: f32) -> Result<S::Ok, S::Error> {
        if v.is_finite() { self.0.serialize_f32(v) } else { Err(non_finite(f64::from(v))) }
    }

    #[inline]
    fn serialize_f64(self, v: f64) -> Result<S::Ok, S::Error> {
        if v.is_finite() { self.0.serialize_f64(v) } else { Err(non_finite(v)) }
    }

    #[inline]
    fn serialize_none(self) -> Result<S::Ok, S::Error> {
        self.0.serialize_none()
    }

    #[inline]
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<S::Ok, S::Error> {
        self.0.serialize_some(&Checked(value))
    }

    #[inline]
    fn serialize_unit(self) -> Result<S::Ok, S::Error> {
        self.0.serialize_unit()
    }

    #[inline]
    fn serialize_unit_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
    ) -> Result<S::Ok, S::Error> {
        self.0.serialize_unit_variant(name, index, variant)
    }

    #[inline]
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        self.0.serialize_newtype_struct(name, &Checked(value))
    }

    #[inline]
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        self.0.serialize_newtype_variant(name, index, variant, &Checked(value))
    }

    #[inline]
    fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq, S::Error> {
        self.0.serialize_seq(len).map(Finite)
    }

    #[inline]
    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, S::Error> {
        self.0.serialize_tuple(len).map(Finite)
    }

    #[inline]
    fn serialize_tuple_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleStruct, S::Error> {
        self.0.serialize_tuple_struct(name, len).map(Finite)
    }

    #[inline]
    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, S::Error> {
        self.0.serialize_tuple_variant(name, index, variant, len).map(Finite)
    }

    #[inline]
    fn serialize_map(self, len: Option<usize>) -> Result<Self::SerializeMap, S::Error> {
        self.0.serialize_map(len).map(Finite)
    }

    #[inline]
    fn serialize_struct(self, name: &'static str, len: usize) -> Result<Self::SerializeStruct, S::Error> {
        self.0.serialize_struct(name, len).map(Finite)
    }

    #[inline]
    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, S::Error> {
        self.0.serialize_struct_variant(name, index, variant, len).map(Finite)
    }

    #[inline]
    fn collect_str<T: ?Sized + std::fmt::Display>(self, value: &T) -> Result<S::Ok, S::Error> {
        self.0.collect_str(value)
    }

    #[inline]
    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

/// Compound serializers whose elements (or fields) go through [`Checked`].
macro_rules! compound {
    ($($trait:ident, $method:ident;)*) => {$(
        impl<C: ser::$trait> ser::$trait for Finite<C> {
            type Ok = C::Ok;
            type Error = C::Error;

            #[inline]
            fn $method<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), C::Error> {
                self.0.$method(&Checked(value))
            }

            #[inline]
            fn end(self) -> Result<C::Ok, C::Error> {
                self.0.end()
            }
        }
    )*};
}

compound! {
    SerializeSeq, serialize_element;
    SerializeTuple, serialize_element;
    SerializeTupleStruct, serialize_field;
    SerializeTupleVariant, serialize_field;
}

/// Compound serializers with named fields.
macro_rules! named {
    ($($trait:ident;)*) => {$(
        impl<C: ser::$trait> ser::$trait for Finite<C> {
            type Ok = C::Ok;
            type Error = C::Error;

            #[inline]
            fn serialize_field<T: ?Sized + Serialize>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), C::Error> {
                self.0.serialize_field(key, &Checked(value))
            }

            #[inline]
            fn skip_field(&mut self, key: &'static str) -> Result<(), C::Error> {
                self.0.skip_field(key)
            }

            #[inline]
            fn end(self) -> Result<C::Ok, C::Error> {
                self.0.end()
            }
        }
    )*};
}

named! {
    SerializeStruct;
    SerializeStructVariant;
}

impl<C: ser::SerializeMap> ser::SerializeMap for Finite<C> {
    type Ok = C::Ok;
    type Error = C::Error;

    #[inline]
    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> Result<(), C::Error> {
        self.0.serialize_key(&Checked(key))
    }

    #[inline]
    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), C::Error> {
        self.0.serialize_value(&Checked(value))
    }

    #[inline]
    fn serialize_entry<K: ?Sized + Serialize, V: ?Sized + Serialize>(
        &mut self,
        key: &K,
        value: &V,
    ) -> Result<(), C::Error> {
        self.0.serialize_entry(&Checked(key), &Checked(value))
    }

    #[inline]
    fn end(self) -> Result<C::Ok, C::Error> {
        self.0.end()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use serde::Serialize;

    use super::to_vec;

    #[derive(Serialize)]
    struct Inner {
        label: &'static str,
        x: f64,
    }

    #[derive(Serialize)]
    struct Outer {
        id: u32,
        inner: Inner,
        list: Vec<f32>,
        maybe: Option<f64>,
        pair: (u8, f64),
    }

    #[derive(Serialize)]
    enum Shape {
        Unit,
        Newtype(f64),
        Tuple(u8, f64),
        Struct { r: f64 },
    }

    #[derive(Serialize)]
    struct Wrapper(f64);

    #[derive(Serialize)]
    struct Pair(f32, f32);

    /// A map with one float key.
    struct FloatKey(f64);

    impl Serialize for FloatKey {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_map([(self.0, 1u8)])
        }
    }

    fn message(r: serde_json::Result<Vec<u8>>) -> String {
        r.expect_err("must refuse a non-finite float").to_string()
    }

    fn outer(x: f64) -> Outer {
        Outer {
            id: 1,
            inner: Inner { label: "a", x },
            list: vec![1.5, -0.25],
            maybe: Some(2.0),
            pair: (3, 4.5),
        }
    }

    #[test]
    fn finite_values_encode_exactly_as_serde_json() {
        let mut map = BTreeMap::new();
        map.insert("k", vec![Some(1.0f64), None, Some(-2.5e300)]);
        let mut hashed = HashMap::new();
        hashed.insert(7u8, f32::MIN_POSITIVE);
        let values = (
            outer(0.1),
            [Shape::Unit, Shape::Newtype(1.0), Shape::Tuple(2, 3.0), Shape::Struct { r: -0.0 }],
            Wrapper(f64::MAX),
            Pair(f32::MIN, 1e-30),
            map,
            hashed,
            ("text \"quoted\" \u{1f600}", b"bytes".as_slice(), 'c', i128::MIN, u128::MAX),
            serde_json::json!({"a": [1, 2.5, null, true, "s"]}),
        );
        assert_eq!(to_vec(&values).unwrap(), serde_json::to_vec(&values).unwrap());
        // serde_json writes float map keys as strings; finite ones still pass.
        assert_eq!(to_vec(&FloatKey(1.5)).unwrap(), b"{\"1.5\":1}");
        assert_eq!(to_vec(&FloatKey(1.5)).unwrap(), serde_json::to_vec(&FloatKey(1.5)).unwrap());
    }

    #[test]
    fn non_finite_floats_are_refused_and_named() {
        for (x, name) in [(f64::NAN, "NaN"), (f64::INFINITY, "+inf"), (f64::NEG_INFINITY, "-inf")] {
            let expected = format!("non-finite float ({name}) cannot be stored as JSON");
            assert_eq!(message(to_vec(&x)), expected);
            assert_eq!(message(to_vec(&(x as f32))), expected);
            assert!(message(to_vec(&outer(x))).contains(&expected), "nested in a struct");
            assert!(message(to_vec(&vec![0.0, x])).contains(&expected), "in a seq");
            assert!(message(to_vec(&Some(x))).contains(&expected), "in an option");
            assert!(message(to_vec(&(1u8, x))).contains(&expected), "in a tuple");
            assert!(message(to_vec(&Wrapper(x))).contains(&expected), "newtype struct");
            assert!(message(to_vec(&Pair(0.0, x as f32))).contains(&expected), "tuple struct");
            assert!(message(to_vec(&Shape::Newtype(x))).contains(&expected), "newtype variant");
            assert!(message(to_vec(&Shape::Tuple(0, x))).contains(&expected), "tuple variant");
            assert!(message(to_vec(&Shape::Struct { r: x })).contains(&expected), "struct variant");
            let map: BTreeMap<&str, f64> = [("k", x)].into();
            assert!(message(to_vec(&map)).contains(&expected), "map value");
            let deep: Vec<HashMap<String, Vec<Option<f64>>>> =
                vec![[("k".into(), vec![None, Some(x)])].into()];
            assert!(message(to_vec(&deep)).contains(&expected), "deep");
            assert_eq!(message(to_vec(&FloatKey(x))), expected, "map key");
        }
    }
}
