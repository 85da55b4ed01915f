"""Constants shared by the twin's radar, which synthesises FMCW cubes, and shards' radar processing, which
turns cubes into points: both must use the same chirp, or ranges and velocities come out scaled."""
from __future__ import annotations

SPEED_OF_LIGHT = 299_792_458.0

# a 77 GHz TI-style chirp (the defaults of shards.radar.RadarConfig and twin.vehicle_sensors.FMCWConfig)
START_FREQ_HZ = 77e9
SLOPE_HZ_PER_S = 15.015e12
SAMPLE_RATE_HZ = 4.0e6
CHIRP_PERIOD_S = 65e-6
