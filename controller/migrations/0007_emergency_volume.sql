-- The emergency output volume set from the console, in percent (NULL =
-- never set: the receiver keeps its --emergency-volume flag). Published with
-- the normal volume in the receiver's retained settings.
ALTER TABLE receivers ADD COLUMN emergency_volume INTEGER CHECK (emergency_volume BETWEEN 0 AND 100);
