-- Receiver output settings set from the console (issue 4, "Cụm loa"): the
-- normal volume in percent (NULL = never set: the receiver keeps its
-- --volume flag), the settings version published to the receiver (grows
-- with every change), the version last published, and what the receiver
-- last reported: its amplifier relay and the volume in force.
ALTER TABLE receivers ADD COLUMN volume INTEGER CHECK (volume BETWEEN 0 AND 100);
ALTER TABLE receivers ADD COLUMN settings_version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE receivers ADD COLUMN amplifier_on BOOLEAN;
ALTER TABLE receivers ADD COLUMN reported_volume INTEGER;
