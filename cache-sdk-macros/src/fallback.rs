//! On a mistake, emit the function as it was written plus the error, so that the user sees
//! one message at the attribute instead of a cascade of errors from the function's callers.

use proc_macro2::TokenStream;
use quote::quote;

pub(crate) fn emit(item: TokenStream, error: &syn::Error) -> TokenStream {
    let error = error.to_compile_error();
    quote! {
        #error
        #item
    }
}
