//! View layers (`Flatten`, `Reshape`): the same values seen with another shape. Their output
//! aliases their input in the activation buffer, so no pass does any work for them.

use crate::error::{CoreError, SpecError};
use crate::layers::{Backward, Forward, Infer, Kind, Q8Role, Rules, Sizes, Tangent};
use crate::spec::Shape;

/// A view layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// As a flat vector.
    Flatten,
    /// As the given shape (same element count).
    Reshape(Shape),
}

/// Shape rule of `Flatten`: `C·H·W` features.
pub(crate) const fn flatten_rules(in_len: usize, index: usize) -> Result<Rules, SpecError> {
    if in_len > u32::MAX as usize {
        return Err(SpecError::BadDimension { layer: index });
    }
    Ok(Rules { out: Shape::flat(in_len as u32), sizes: Sizes::NONE, view: true })
}

/// Shape rule of `Reshape`: `to`, which must hold as many elements as the input.
pub(crate) const fn reshape_rules(
    to: Shape, in_len: usize, index: usize,
) -> Result<Rules, SpecError> {
    match to.checked_len() {
        Some(n) if n == in_len => Ok(Rules { out: to, sizes: Sizes::NONE, view: true }),
        _ => Err(SpecError::ShapeMismatch { layer: index }),
    }
}

impl Kind for View {
    fn name(&self) -> &'static str {
        match self {
            View::Flatten => "flatten",
            View::Reshape(_) => "reshape",
        }
    }
    // The walkers skip views (their output is their input), so these are never reached with
    // work to do.
    fn forward(&self, _: Forward<'_>) -> Result<(), CoreError> {
        Ok(())
    }
    fn backward(&self, _: Backward<'_>) -> Result<(), CoreError> {
        Ok(())
    }
    fn infer(&self, _: Infer<'_, '_, '_>) -> Result<(), CoreError> {
        Ok(())
    }
    fn tangent(&self) -> Option<Tangent> {
        Some(Tangent::View)
    }
    fn q8(&self) -> Q8Role {
        Q8Role::Pass
    }
}
