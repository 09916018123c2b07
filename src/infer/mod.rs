//! In-process answers: stages that turn model outputs (and chains of models)
//! into what a robot asked for, inside the worker, on its budget. [`ocr`] is
//! the PP-OCR chain (text detection → crop → angle classifier → recognition).

pub mod ocr;
