//! `gan-train`: the desktop side of the project. Loads MNIST-format data, trains GANs on top of
//! `gan-core`, writes reports (sample grids, loss plots, GIFs), checkpoints and resumes, and
//! exports generator weights for the firmware.

pub mod augment;
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod download;
pub mod failpoint;
pub mod fuzz;
pub mod inspect;
pub mod limits;
pub mod quality;
pub mod report;
pub mod run;
pub mod sample;
pub mod score;
pub mod team;
pub mod toy;
pub mod trainer;
pub mod uf2;
